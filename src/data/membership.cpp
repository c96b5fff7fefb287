#include "data/membership.h"

#ifdef ESM2_HAVE_EXPAT
#include <expat.h>
#endif

#include <exception>
#include <memory>
#include <unordered_set>

#include "core/error.h"
#include "data/cluster_tsv.h"
#include "data/id_hash.h"

namespace esm2 {

bool uniref_xml_supported() {
#ifdef ESM2_HAVE_EXPAT
  return true;
#else
  return false;
#endif
}

MembershipFormat detect_membership_format(const std::filesystem::path& path) {
  ByteSource src(path);
  for (std::string_view chunk = src.next(); !chunk.empty(); chunk = src.next()) {
    size_t k = chunk.find_first_not_of(" \t\r\n");
    if (k != std::string_view::npos) return chunk[k] == '<' ? MembershipFormat::UnirefXml : MembershipFormat::Tsv;
  }
  return MembershipFormat::Tsv;
}

namespace {

FileDigest read_tsv(const std::filesystem::path& path, const MembershipPairFn& on_pair) {
  const std::string file = path.string();
  LineReader lines(path);
  std::string_view line;
  while (lines.next(line)) {
    if (line.empty()) continue;
    const auto [rep, member] = split_cluster_line(line, file, lines.line_number());
    on_pair(rep, member, lines.line_number());
  }
  return {lines.source().raw_bytes(), lines.source().raw_crc32()};
}

#ifdef ESM2_HAVE_EXPAT
// SAX state over uniref50.xml. Callbacks never throw through expat (a C library): the first error is
// kept and the parser stopped, and the caller rethrows it.
struct XmlState {
  XML_Parser parser = nullptr;
  std::string file;
  const MembershipPairFn* on_pair = nullptr;
  std::exception_ptr error;
  std::string entry;          // id of the open <entry>
  uint64_t entry_line = 0;
  int member_depth = 0;       // inside <representativeMember>/<member>
  bool in_dbref = false;      // inside a member's <dbReference>
  bool member_has_ur90 = false;
  uint64_t member_line = 0;
  uint64_t ordinal = 0;
  struct HashOf {
    size_t operator()(const IdHash128& h) const { return static_cast<size_t>(h.lo); }
  };
  std::unordered_set<IdHash128, HashOf> seen;  // UR90 ids of the open entry (one entry at a time)

  uint64_t line() const { return static_cast<uint64_t>(XML_GetCurrentLineNumber(parser)); }
  template <class... Args>
  void stop(fmt::format_string<Args...> f, Args&&... args) {
    if (!error) error = std::make_exception_ptr(Error(fmt::format(f, std::forward<Args>(args)...)));
    XML_StopParser(parser, XML_FALSE);
  }
};

const char* attr(const XML_Char** atts, const char* name) {
  for (int i = 0; atts[i]; i += 2)
    if (std::strcmp(atts[i], name) == 0) return atts[i + 1];
  return nullptr;
}

void XMLCALL on_start(void* user, const XML_Char* name, const XML_Char** atts) {
  auto& s = *static_cast<XmlState*>(user);
  if (s.error) return;
  if (std::strcmp(name, "entry") == 0) {
    const char* id = attr(atts, "id");
    if (!id || !*id) return s.stop("{}: line {}: <entry> without an id attribute", s.file, s.line());
    s.entry = id;
    s.entry_line = s.line();
    s.seen.clear();
  } else if (std::strcmp(name, "representativeMember") == 0 || std::strcmp(name, "member") == 0) {
    if (s.entry.empty()) return s.stop("{}: line {}: <{}> outside an <entry>", s.file, s.line(), name);
    ++s.member_depth;
    s.member_has_ur90 = false;
    s.member_line = s.line();
  } else if (s.member_depth > 0 && std::strcmp(name, "dbReference") == 0) {
    s.in_dbref = true;
  } else if (s.in_dbref && std::strcmp(name, "property") == 0) {
    const char* type = attr(atts, "type");
    if (!type || std::strcmp(type, "UniRef90 ID") != 0) return;
    const char* value = attr(atts, "value");
    if (!value || !*value)
      return s.stop("{}: line {}: entry '{}': UniRef90 ID property without a value", s.file, s.line(), s.entry);
    s.member_has_ur90 = true;
    if (!s.seen.insert(hash_id(value)).second) return;  // another UniProtKB member of the same UR90 cluster
    try {
      (*s.on_pair)(s.entry, value, s.ordinal++);
    } catch (...) {
      s.error = std::current_exception();
      XML_StopParser(s.parser, XML_FALSE);
    }
  }
}

void XMLCALL on_end(void* user, const XML_Char* name) {
  auto& s = *static_cast<XmlState*>(user);
  if (s.error) return;
  if (std::strcmp(name, "entry") == 0) {
    s.entry.clear();
  } else if (std::strcmp(name, "representativeMember") == 0 || std::strcmp(name, "member") == 0) {
    --s.member_depth;
    if (!s.member_has_ur90)
      s.stop("{}: line {}: entry '{}': <{}> has no <property type=\"UniRef90 ID\">", s.file, s.member_line, s.entry,
             name);
  } else if (std::strcmp(name, "dbReference") == 0) {
    s.in_dbref = false;
  }
}

FileDigest read_xml(const std::filesystem::path& path, const MembershipPairFn& on_pair) {
  XmlState s;
  s.file = path.string();
  s.on_pair = &on_pair;
  std::unique_ptr<std::remove_pointer_t<XML_Parser>, decltype(&XML_ParserFree)> parser(XML_ParserCreate(nullptr),
                                                                                      &XML_ParserFree);
  ESM2_CHECK(parser != nullptr, "{}: cannot create an XML parser", s.file);
  s.parser = parser.get();
  XML_SetUserData(s.parser, &s);
  XML_SetElementHandler(s.parser, on_start, on_end);
  ByteSource src(path);
  for (;;) {
    std::string_view chunk = src.next();
    bool last = chunk.empty();
    if (XML_Parse(s.parser, chunk.data(), static_cast<int>(chunk.size()), last) == XML_STATUS_ERROR) {
      if (s.error) std::rethrow_exception(s.error);
      fail("{}: line {}: malformed XML: {}", s.file, XML_GetCurrentLineNumber(s.parser),
           XML_ErrorString(XML_GetErrorCode(s.parser)));
    }
    if (last) break;
  }
  return {src.raw_bytes(), src.raw_crc32()};
}
#else
FileDigest read_xml(const std::filesystem::path& path, const MembershipPairFn&) {
  fail("{}: UniRef XML input needs libexpat, and this esm2 was built without it (install libexpat1-dev and rebuild)",
       path.string());
}
#endif

}  // namespace

FileDigest read_membership(const std::filesystem::path& path, const MembershipPairFn& on_pair) {
  return detect_membership_format(path) == MembershipFormat::UnirefXml ? read_xml(path, on_pair)
                                                                       : read_tsv(path, on_pair);
}

MembershipPairInfo locate_membership_pair(const std::filesystem::path& path, uint64_t key) {
  MembershipPairInfo info;
  bool xml = detect_membership_format(path) == MembershipFormat::UnirefXml;
  // Stops the scan at the pair; an exception is the simplest exit from both readers.
  struct Found {};
  try {
    auto on_pair = [&](std::string_view cluster, std::string_view member, uint64_t k) {
      if (k != key) return;
      info.cluster = cluster;
      info.member = member;
      throw Found{};
    };
    if (xml) {
      read_xml(path, on_pair);
    } else {
      read_tsv(path, on_pair);
    }
  } catch (const Found&) {
    info.where = xml ? fmt::format("pair {} (entry '{}')", key + 1, info.cluster) : fmt::format("line {}", key);
    return info;
  }
  fail("{}: has no pair {} (it changed while being read?)", path.string(), key);
}

}  // namespace esm2
