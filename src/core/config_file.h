// `--config FILE`: options from a file, for any subcommand. The file is either a JSON object
// ({"num-steps": 1000, "resume-if-exists": true}) or TOML/INI-style lines (`num-steps = 1000`,
// `# comments`, `[section]` headers ignored, quoted strings). Keys are the long flag names with or
// without the leading dashes; `true` gives a bare flag, `false` omits it, lists repeat the flag.
// The options are spliced in where --config stood, so flags given after it override the file.
#pragma once
#include <string>
#include <vector>

namespace esm2 {

// Returns args with every "--config FILE" / "--config=FILE" replaced by the file's options.
std::vector<std::string> expand_config_args(const std::vector<std::string>& args);

}  // namespace esm2
