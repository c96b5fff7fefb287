// Cluster membership as a stream of (cluster, member) pairs, read without holding the file:
//   TSV: mmseqs2 `*_cluster.tsv`, one line `ur50<TAB>ur90` per member (the key of a pair is its
//        line number);
//   XML: UniProt's `uniref50.xml[.gz]` (schema http://www.uniprot.org/support/docs/uniref.xsd):
//        <entry id="UniRef50_X"> with one <representativeMember> and any number of <member>, each
//        holding a <dbReference type="UniProtKB ID"|"UniParc ID" id=…> whose
//        <property type="UniRef90 ID" value="UniRef90_Y"/> names the member's UR90 cluster. Several
//        UniProtKB members of one entry share a UR90 cluster; each (entry, UR90) pair is reported
//        once (the key is the pair's ordinal).
// The format is recognised by content (an XML file starts with '<'), plain or gzip.
#pragma once
#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <string_view>

#include "data/byte_source.h"

namespace esm2 {

enum class MembershipFormat { Tsv, UnirefXml };
// False when this esm2 was built without libexpat: an XML input is then an error saying so.
bool uniref_xml_supported();
MembershipFormat detect_membership_format(const std::filesystem::path& path);

// Calls on_pair(cluster, member, key) for every pair in document order (keys increase). Errors name
// the file and line: a TSV line without exactly two non-empty tab-separated fields; malformed XML, an
// entry without an id, a member without a UniRef90 ID. Returns the file's size and crc32.
using MembershipPairFn = std::function<void(std::string_view cluster, std::string_view member, uint64_t key)>;
FileDigest read_membership(const std::filesystem::path& path, const MembershipPairFn& on_pair);

// The pair with this key, for error messages found after the file was read: `where` is "line N"
// (TSV) or "line N (entry 'UniRef50_X')" (XML).
struct MembershipPairInfo {
  std::string where, cluster, member;
};
MembershipPairInfo locate_membership_pair(const std::filesystem::path& path, uint64_t key);

}  // namespace esm2
