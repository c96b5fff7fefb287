#include "data/sqlite_proteins.h"

#include <sqlite3.h>

#include <memory>
#include <set>

#include "core/error.h"

namespace esm2 {

namespace {
struct DbCloser {
  void operator()(sqlite3* db) const { sqlite3_close_v2(db); }
};
struct StmtFinalizer {
  void operator()(sqlite3_stmt* s) const { sqlite3_finalize(s); }
};
using Db = std::unique_ptr<sqlite3, DbCloser>;
using Stmt = std::unique_ptr<sqlite3_stmt, StmtFinalizer>;

Stmt prepare(sqlite3* db, const std::string& file, const char* sql) {
  sqlite3_stmt* s = nullptr;
  int rc = sqlite3_prepare_v2(db, sql, -1, &s, nullptr);
  Stmt stmt(s);
  ESM2_CHECK(rc == SQLITE_OK, "{}: cannot query '{}': {}", file, sql, sqlite3_errmsg(db));
  return stmt;
}
}  // namespace

void read_sqlite_proteins(const std::filesystem::path& path, SequenceTable& table,
                          const std::function<bool(std::string_view)>& keep) {
  const std::string file = path.string();
  // sqlite3_open_v2 with READONLY would create nothing but reports a missing file only at first query.
  ESM2_CHECK(std::filesystem::is_regular_file(path), "{}: cannot open: no such file", file);
  sqlite3* raw = nullptr;
  int rc = sqlite3_open_v2(path.c_str(), &raw, SQLITE_OPEN_READONLY, nullptr);
  Db db(raw);
  ESM2_CHECK(rc == SQLITE_OK, "{}: cannot open SQLite database: {}", file,
             raw ? sqlite3_errmsg(raw) : sqlite3_errstr(rc));

  std::set<std::string> columns;
  {
    Stmt info = prepare(db.get(), file, "PRAGMA table_info(protein)");
    while ((rc = sqlite3_step(info.get())) == SQLITE_ROW)
      columns.insert(reinterpret_cast<const char*>(sqlite3_column_text(info.get(), 1)));
    ESM2_CHECK(rc == SQLITE_DONE, "{}: reading the schema failed: {}", file, sqlite3_errmsg(db.get()));
  }
  ESM2_CHECK(!columns.empty(), "{}: no table 'protein' (expected protein(id TEXT PRIMARY KEY, sequence TEXT))", file);
  for (const char* c : {"id", "sequence"})
    ESM2_CHECK(columns.count(c), "{}: table 'protein' has no column '{}'", file, c);

  Stmt rows = prepare(db.get(), file, "SELECT id, sequence, rowid FROM protein ORDER BY rowid");
  std::vector<uint8_t> residues;
  while ((rc = sqlite3_step(rows.get())) == SQLITE_ROW) {
    const auto* idp = reinterpret_cast<const char*>(sqlite3_column_text(rows.get(), 0));
    ESM2_CHECK(idp != nullptr, "{}: a row of 'protein' has a NULL id", file);
    std::string_view id(idp, static_cast<size_t>(sqlite3_column_bytes(rows.get(), 0)));
    if (keep && !keep(id)) continue;
    ESM2_CHECK(!id.empty(), "{}: a row of 'protein' has an empty id (rowid {})", file,
               static_cast<long long>(sqlite3_column_int64(rows.get(), 2)));
    const auto* sp = reinterpret_cast<const char*>(sqlite3_column_text(rows.get(), 1));
    std::string_view seq(sp ? sp : "", sp ? static_cast<size_t>(sqlite3_column_bytes(rows.get(), 1)) : 0);
    ESM2_CHECK(!seq.empty(), "{}: protein '{}': empty or NULL sequence", file, id);
    residues.clear();
    int64_t bad = tokenize_residues(seq, residues);
    if (bad >= 0)
      fail("{}: protein '{}': non-letter character {} at residue {}", file, id, printable_byte(seq[bad]), bad + 1);
    ESM2_CHECK(table.add(id, residues), "{}: protein '{}': duplicate id", file, id);
  }
  ESM2_CHECK(rc == SQLITE_DONE, "{}: reading 'protein' failed: {}", file, sqlite3_errmsg(db.get()));
}

}  // namespace esm2
