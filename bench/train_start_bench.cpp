// Training start-up cost on a (large) corpus: Corpus::open (maps and verifies every file), the
// cluster sampler, and the first step's batch, each with its wall time and the process's resident
// memory split into anonymous (heap) and file-backed (the mapped corpus, reclaimable page cache).
//   build/train_start_bench CORPUS_DIR [micro_batch_tokens=16384] [min_seq_length=0]
#include <chrono>
#include <cstdio>
#include <fstream>
#include <memory>
#include <string>

#include "data/corpus.h"
#include "data/train_data.h"

namespace {

std::string rss() {
  std::ifstream f("/proc/self/status");
  std::string line, anon = "?", file = "?";
  while (std::getline(f, line)) {
    if (line.rfind("RssAnon:", 0) == 0) anon = line.substr(8);
    if (line.rfind("RssFile:", 0) == 0) file = line.substr(8);
  }
  auto trim = [](std::string s) { return s.substr(s.find_first_not_of(" \t")); };
  return "RssAnon " + trim(anon) + ", RssFile " + trim(file);
}

double since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s CORPUS_DIR [micro_batch_tokens] [min_seq_length]\n", argv[0]);
    return 2;
  }
  try {
    auto t0 = std::chrono::steady_clock::now();
    auto corpus = std::make_shared<const esm2::Corpus>(esm2::Corpus::open(argv[1]));
    std::printf("Corpus::open: %.2f s (%zu sequences, %zu clusters, %llu residues); %s\n", since(t0),
                corpus->num_sequences(), corpus->num_clusters(),
                static_cast<unsigned long long>(corpus->num_residues()), rss().c_str());
    esm2::DataConfig cfg;
    cfg.max_seq_length = 1024;
    cfg.micro_batch_tokens = argc > 2 ? std::stoll(argv[2]) : 16384;
    cfg.min_seq_length = argc > 3 ? std::stoi(argv[3]) : 0;
    auto t1 = std::chrono::steady_clock::now();
    esm2::TrainData data(corpus, cfg);
    std::printf("sampler: %.2f s (%zu eligible clusters, %s); %s\n", since(t1), data.sampler().num_eligible_clusters(),
                data.sampler().zero_copy() ? "tables mapped in place" : "filtered copy", rss().c_str());
    auto t2 = std::chrono::steady_clock::now();
    esm2::DataPosition pos;
    esm2::StepBatch b = data.next_step(pos, 0, 1);
    std::printf("first step's batch (epoch permutation included): %.2f s (%lld tokens); %s\n", since(t2),
                static_cast<long long>(b.global_num_tokens), rss().c_str());
    std::printf("total to the first batch: %.2f s\n", since(t0));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
  return 0;
}
