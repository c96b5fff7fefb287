#include "data/cluster_tsv.h"

#include <unordered_map>

#include "core/error.h"
#include "data/byte_source.h"

namespace esm2 {

std::pair<std::string_view, std::string_view> split_cluster_line(std::string_view line, const std::string& file,
                                                                 uint64_t line_number) {
  const size_t tab = line.find('\t');
  ESM2_CHECK(tab != std::string_view::npos && line.find('\t', tab + 1) == std::string_view::npos,
             "{}: line {}: expected 'cluster<TAB>member'", file, line_number);
  std::string_view rep = line.substr(0, tab), member = line.substr(tab + 1);
  ESM2_CHECK(!rep.empty() && !member.empty(), "{}: line {}: empty cluster or member id", file, line_number);
  return {rep, member};
}

ClusterTable read_cluster_tsv(const std::filesystem::path& path, const SequenceTable& sequences) {
  const std::string file = path.string();
  constexpr uint32_t kNone = UINT32_MAX;
  std::vector<uint32_t> cluster_of(sequences.size(), kNone);  // [n]
  std::vector<uint64_t> line_of(sequences.size(), 0);         // [n] for duplicate messages
  std::unordered_map<std::string, uint32_t> cluster_index;
  std::vector<uint64_t> counts;  // [C]
  LineReader lines(path);
  std::string_view line;
  while (lines.next(line)) {
    if (line.empty()) continue;
    const auto [rep, member] = split_cluster_line(line, file, lines.line_number());
    int64_t seq = sequences.find(member);
    ESM2_CHECK(seq >= 0, "{}: line {}: member '{}' is not among the sequences", file, lines.line_number(), member);
    ESM2_CHECK(cluster_of[seq] == kNone, "{}: line {}: member '{}' already listed on line {}", file,
               lines.line_number(), member, line_of[seq]);
    auto [it, inserted] = cluster_index.emplace(std::string(rep), static_cast<uint32_t>(counts.size()));
    if (inserted) counts.push_back(0);
    cluster_of[seq] = it->second;
    line_of[seq] = lines.line_number();
    ++counts[it->second];
  }
  size_t unlisted = 0;
  int64_t first_unlisted = -1;
  for (size_t i = 0; i < cluster_of.size(); ++i)
    if (cluster_of[i] == kNone && unlisted++ == 0) first_unlisted = static_cast<int64_t>(i);
  ESM2_CHECK(unlisted == 0, "{}: {} sequence(s) are in no cluster, the first is '{}'", file, unlisted,
             sequences.id(first_unlisted));

  // Counting sort: members of a cluster keep their sequence order.
  ClusterTable t;
  t.offsets.resize(counts.size() + 1, 0);
  for (size_t c = 0; c < counts.size(); ++c) t.offsets[c + 1] = t.offsets[c] + counts[c];
  t.members.resize(sequences.size());
  std::vector<uint64_t> fill(t.offsets.begin(), t.offsets.end() - 1);
  for (size_t i = 0; i < cluster_of.size(); ++i) t.members[fill[cluster_of[i]]++] = static_cast<uint32_t>(i);
  return t;
}

}  // namespace esm2
