#include "data/parquet_clusters.h"

#include <algorithm>
#include <unordered_set>

#include "core/error.h"
#include "data/parquet.h"
#include "data/sqlite_proteins.h"

namespace esm2 {

ParquetCorpusInput read_parquet_clusters(const std::filesystem::path& parquet, const std::filesystem::path& sqlite) {
  const std::string file = parquet.string();
  std::vector<std::string> columns = parquet_column_names(parquet);
  auto has = [&](const char* c) { return std::find(columns.begin(), columns.end(), c) != columns.end(); };
  ParquetCorpusInput in;
  std::vector<std::vector<std::string>> rows;  // [C] member ids per cluster
  std::vector<std::string> names;              // [C] ur50_id per row, for messages ("" if absent)
  if (has("ur90_id")) {
    rows = read_parquet_string_list_column(parquet, "ur90_id");
    if (has("ur50_id")) names = read_parquet_string_column(parquet, "ur50_id");
  } else if (has("ur50_id")) {
    in.validation = true;
    names = read_parquet_string_column(parquet, "ur50_id");
    rows.reserve(names.size());
    for (const auto& id : names) rows.push_back({id});
  } else {
    std::string list;
    for (const auto& c : columns) list += (list.empty() ? "" : ", ") + c;
    fail("{}: neither a train (ur90_id list) nor a validation (ur50_id) cluster file; columns: {}", file, list);
  }
  ESM2_CHECK(!rows.empty(), "{}: no rows (no clusters)", file);
  auto row_name = [&](size_t r) {
    return r < names.size() ? fmt::format("row {} (ur50_id '{}')", r, names[r]) : fmt::format("row {}", r);
  };

  std::unordered_set<std::string> needed;
  for (size_t r = 0; r < rows.size(); ++r) {
    ESM2_CHECK(!rows[r].empty(), "{}: {}: empty cluster", file, row_name(r));
    for (const auto& id : rows[r])
      ESM2_CHECK(needed.insert(id).second || in.validation, "{}: {}: member '{}' is listed twice", file, row_name(r),
                 id);
  }
  read_sqlite_proteins(sqlite, in.sequences, [&](std::string_view id) {
    bool keep = needed.count(std::string(id)) > 0;
    in.unreferenced += !keep;
    return keep;
  });
  for (size_t r = 0; r < rows.size(); ++r) {
    for (const auto& id : rows[r]) {
      int64_t seq = in.sequences.find(id);
      ESM2_CHECK(seq >= 0, "{}: {}: member '{}' is not in {}", file, row_name(r), id, sqlite.string());
      in.clusters.members.push_back(static_cast<uint32_t>(seq));
    }
    in.clusters.offsets.push_back(in.clusters.members.size());
  }
  return in;
}

}  // namespace esm2
