// `esm2 convert`: any Hugging Face ESM-2 directory (one file or shards, transformers 4.x/5.x key
// spellings, F32/F16/BF16) or one of our training checkpoints → a clean Hugging Face directory in the
// layout our trainer writes (.weight/.bias names, per-layer inv_freq, contact head and other extra
// tensors kept, config.json + tokenizer files), in the requested dtype, optionally sharded.
#include <cctype>
#include <cstdio>
#include <cstring>

#include "apps/command.h"
#include "core/atomic_dir.h"
#include "core/error.h"
#include "io/hf_checkpoint.h"
#include "io/safetensors.h"

namespace fs = std::filesystem;
using esm2::DType;

namespace {

struct ConvertArgs {
  fs::path input, output;
  std::string dtype = "fp32";
  std::string max_shard_size = "0";
  bool force = false;
};

// "1234", "500MB", "2GB", "1.5GiB" → bytes. Decimal units as transformers' max_shard_size
// ("5GB" = 5·10^9), binary ones (KiB/MiB/GiB) as usual.
uint64_t parse_byte_size(const std::string& text) {
  size_t i = 0;
  while (i < text.size() && (std::isdigit(static_cast<unsigned char>(text[i])) || text[i] == '.')) ++i;
  std::string unit = text.substr(i);
  for (auto& ch : unit) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
  double mult = 0;
  if (unit.empty() || unit == "B") mult = 1;
  else if (unit == "KB") mult = 1e3;
  else if (unit == "MB") mult = 1e6;
  else if (unit == "GB") mult = 1e9;
  else if (unit == "KIB") mult = 1024.0;
  else if (unit == "MIB") mult = 1024.0 * 1024;
  else if (unit == "GIB") mult = 1024.0 * 1024 * 1024;
  double num = -1;
  if (i > 0) {
    try {
      size_t used = 0;
      num = std::stod(text.substr(0, i), &used);
      if (used != i) num = -1;
    } catch (const std::exception&) {
      num = -1;
    }
  }
  ESM2_CHECK(mult > 0 && num >= 0 && num * mult < 1.8e19,
             "convert: --max-shard-size '{}' is not a size (bytes, or a number with B, KB, MB, GB, KiB, MiB, GiB)",
             text);
  return static_cast<uint64_t>(num * mult);
}

DType parse_dtype_flag(const std::string& s) {
  if (s == "fp32" || s == "float32") return DType::F32;
  if (s == "bf16" || s == "bfloat16") return DType::BF16;
  if (s == "fp16" || s == "float16") return DType::F16;
  esm2::fail("convert: --dtype '{}' is not one of fp32, bf16, fp16", s);
}

// Floating-point extra tensors (the contact head) follow --dtype like the parameters, so a bf16
// directory is bf16 throughout; integer tensors, and those already in the target type, stay verbatim.
void cast_extra(esm2::RawTensor& t, DType to) {
  const bool is_float = t.dtype == DType::F32 || t.dtype == DType::F16 || t.dtype == DType::BF16 || t.dtype == DType::F64;
  if (!is_float || t.dtype == to) return;
  const size_t n = t.data.size() / esm2::dtype_size(t.dtype);
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) {
    const char* p = t.data.data() + i * esm2::dtype_size(t.dtype);
    if (t.dtype == DType::F32) std::memcpy(&v[i], p, 4);
    else if (t.dtype == DType::F64) { double d; std::memcpy(&d, p, 8); v[i] = static_cast<float>(d); }
    else { uint16_t h; std::memcpy(&h, p, 2); v[i] = t.dtype == DType::BF16 ? esm2::bf16_to_f32(h) : esm2::f16_to_f32(h); }
  }
  std::string out(n * esm2::dtype_size(to), '\0');
  for (size_t i = 0; i < n; ++i) {
    char* p = out.data() + i * esm2::dtype_size(to);
    if (to == DType::F32) { std::memcpy(p, &v[i], 4); continue; }
    const uint16_t h = to == DType::BF16 ? esm2::f32_to_bf16(v[i]) : esm2::f32_to_f16(v[i]);
    std::memcpy(p, &h, 2);
  }
  t.data = std::move(out);
  t.dtype = to;
}

esm2::apps::RunFn setup_convert(CLI::App& app) {
  auto a = std::make_shared<ConvertArgs>();
  app.add_option("--input", a->input,
                 "Hugging Face ESM-2 directory (single file or shards) or an esm2.cpp training checkpoint (step-*)")
      ->required();
  app.add_option("--output", a->output, "Hugging Face directory to write (appears complete or not at all)")->required();
  app.add_option("--dtype", a->dtype, "Storage type of the weights: fp32, bf16 or fp16 (inv_freq stays fp32)")
      ->capture_default_str();
  app.add_option("--max-shard-size", a->max_shard_size,
                 "Shard model.safetensors into files of at most this size (bytes, or e.g. 500MB, 2GB, 1GiB; 0: one file)")
      ->capture_default_str();
  app.add_flag("--force", a->force, "Replace an existing output directory");
  return [a]() -> int {
    using esm2::fail;
    const DType dtype = parse_dtype_flag(a->dtype);
    esm2::HfSaveOptions opt;
    opt.dtype = dtype;
    opt.max_shard_bytes = parse_byte_size(a->max_shard_size);
    ESM2_CHECK(fs::is_directory(a->input), "{}: input directory not found", a->input.string());
    ESM2_CHECK(fs::exists(a->input / "config.json"), "{}: no config.json (not a Hugging Face model directory)",
               a->input.string());
    // Replacing the input (or a directory holding it) while it is the source would be a silent data-loss trap.
    ESM2_CHECK(!esm2::is_same_or_inside(a->input, a->output), "convert: --output {} is the input directory or holds it",
               a->output.string());
    if (fs::exists(a->output)) {
      ESM2_CHECK(a->force, "{}: output already exists (use --force to replace it)", a->output.string());
    }
    // Everything is read into memory before the output is created, so a bad input leaves nothing.
    esm2::HfCheckpoint ck = esm2::load_hf_checkpoint(a->input);
    for (auto& [name, t] : ck.extra) cast_extra(t, dtype);
    esm2::save_hf_checkpoint(a->output, ck, opt);

    uint64_t bytes = 0;
    int files = 0;
    for (const auto& e : fs::directory_iterator(a->output))
      if (e.path().extension() == ".safetensors") bytes += fs::file_size(e.path()), ++files;
    const auto& c = ck.config;
    std::printf("converted %s -> %s\nmodel: %d layers, hidden %d, heads %d, ffn %d; %zu parameter tensors, "
                "%zu extra tensors kept%s\nweights %s in %d safetensors file(s), %llu bytes\n",
                a->input.c_str(), a->output.c_str(), c.num_layers, c.hidden_size, c.num_attention_heads,
                c.ffn_hidden_size, ck.tensors.size(), ck.extra.size(),
                ck.inv_freq.empty() ? "; inv_freq computed (input had none)" : "",
                std::string(esm2::dtype_name(dtype)).c_str(), files, static_cast<unsigned long long>(bytes));
    return 0;
  };
}

}  // namespace

ESM2_COMMAND(convert, "convert",
             "Convert a Hugging Face ESM-2 directory or a training checkpoint into a clean Hugging Face directory",
             setup_convert);
