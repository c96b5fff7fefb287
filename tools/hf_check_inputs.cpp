// Developer tool: runs one of our checkpoints on the first N sequences of a corpus (some positions
// replaced by <mask>) and writes input_ids / attention_mask / logits as a padded batch in the
// format scripts/verify-hf-load.py reads, so transformers can be compared with our forward pass.
// Usage: hf_check_inputs CHECKPOINT_DIR CORPUS_DIR N MAX_LEN OUT.safetensors
#include <cstdio>
#include <cstring>

#include "backend/backend.h"
#include "core/error.h"
#include "data/corpus.h"
#include "data/tokenizer.h"
#include "io/hf_config.h"
#include "io/safetensors.h"
#include "model/esm2.h"
#include "train/checkpoint.h"

int main(int argc, char** argv) try {
  using namespace esm2;
  ESM2_CHECK(argc == 6, "usage: hf_check_inputs CHECKPOINT_DIR CORPUS_DIR N MAX_LEN OUT.safetensors");
  const std::filesystem::path ckpt = argv[1];
  const Corpus corpus = Corpus::open(argv[2]);
  const int n = std::atoi(argv[3]), max_len = std::atoi(argv[4]);
  auto be = make_cpu_backend(0);
  Esm2Model model(read_hf_config(ckpt / "config.json"), *be);
  load_checkpoint(ckpt, model, nullptr, nullptr);
  MicroBatch mb;
  mb.cu_seqlens.push_back(0);
  int lmax = 0;
  for (int s = 0; s < n && s < static_cast<int>(corpus.num_sequences()); ++s) {
    auto seq = corpus.sequence(s);
    const int L = std::min<int>(static_cast<int>(seq.size()), max_len - 2);
    mb.input_ids.push_back(kCls);
    for (int i = 0; i < L; ++i) mb.input_ids.push_back((i % 7 == 3) ? kMask : seq[i]);  // exercise token dropout
    mb.input_ids.push_back(kEos);
    mb.cu_seqlens.push_back(static_cast<int32_t>(mb.input_ids.size()));
    lmax = std::max(lmax, L + 2);
  }
  mb.labels.assign(mb.input_ids.size(), kIgnoreLabel);
  mb.max_seqlen = lmax;
  std::vector<float> logits;
  model.forward_outputs(mb, &logits, nullptr);
  const int S = static_cast<int>(mb.cu_seqlens.size()) - 1;
  std::vector<int64_t> ids(static_cast<size_t>(S) * lmax, kPad), mask(static_cast<size_t>(S) * lmax, 0);
  std::vector<float> padded(static_cast<size_t>(S) * lmax * kVocabSize, 0.0f);
  for (int s = 0; s < S; ++s)
    for (int t = mb.cu_seqlens[s]; t < mb.cu_seqlens[s + 1]; ++t) {
      const size_t j = static_cast<size_t>(s) * lmax + (t - mb.cu_seqlens[s]);
      ids[j] = mb.input_ids[t];
      mask[j] = 1;
      std::memcpy(&padded[j * kVocabSize], &logits[static_cast<size_t>(t) * kVocabSize], kVocabSize * sizeof(float));
    }
  auto raw_i64 = [](const std::vector<int64_t>& v, std::vector<int64_t> shape) {
    RawTensor r;
    r.dtype = DType::I64;
    r.shape = std::move(shape);
    r.data.assign(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(int64_t));
    return r;
  };
  SafetensorsWriter w;
  w.add_raw("input_ids", raw_i64(ids, {S, lmax}));
  w.add_raw("attention_mask", raw_i64(mask, {S, lmax}));
  w.add_f32("logits", {S, lmax, kVocabSize}, padded);
  w.write(argv[5]);
  std::printf("wrote %s: %d sequences, padded length %d\n", argv[5], S, lmax);
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "hf_check_inputs: error: %s\n", e.what());
  return 1;
}
