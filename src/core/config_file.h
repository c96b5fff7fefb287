// `--config FILE`: options from a file, for any subcommand. The file is either a JSON object
// ({"num-steps": 1000, "resume-if-exists": true}) or TOML/INI-style lines (`num-steps = 1000`,
// `# comments`, `[section]` headers ignored, quoted strings). Keys are the long flag names with or
// without the leading dashes; `true` gives a bare flag, `false` omits it, lists repeat the flag.
// The options are spliced in where --config stood, so flags given after it override the file.
#pragma once
#include <functional>
#include <map>
#include <string>
#include <vector>

namespace esm2 {

// What a flag name is to the command being run: a bare flag (true/false), an option taking a value, or
// not one of its options.
enum class OptionKind { Unknown, Flag, Value };
using OptionKindFn = std::function<OptionKind(const std::string& flag)>;

// Returns args with every "--config FILE" / "--config=FILE" replaced by the file's options. With `kind`,
// each key is checked against the command's options (an unknown key, true/false for an option that takes a
// value, or a value for a bare flag is an error naming the file and key), and `origins` (if given) gets
// flag → "FILE (key K)" for every option a file set, so that a later parse error can name the file.
std::vector<std::string> expand_config_args(const std::vector<std::string>& args, const OptionKindFn& kind = {},
                                            std::map<std::string, std::string>* origins = nullptr);

}  // namespace esm2
