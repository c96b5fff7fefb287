// 128-bit hashes of sequence and cluster ids: `esm2 prepare` joins ids (FASTA records, cluster-table
// members) as fixed-width records on disk instead of heap strings, so 10^8 ids cost 16 bytes each in
// an external sort. Two ids are taken as equal when their 128-bit hashes are: among 10^9 distinct ids
// the chance of any collision is ~10^-21. Two independent 64-bit lanes (multiply-xorshift over 8-byte
// words, murmur3's finaliser) with different seeds.
#pragma once
#include <cstdint>
#include <cstring>
#include <string_view>

namespace esm2 {

struct IdHash128 {
  uint64_t hi = 0, lo = 0;
  auto operator<=>(const IdHash128&) const = default;
};

namespace detail {
inline uint64_t fmix64(uint64_t k) {
  k ^= k >> 33;
  k *= 0xff51afd7ed558ccdull;
  k ^= k >> 33;
  k *= 0xc4ceb9fe1a85ec53ull;
  k ^= k >> 33;
  return k;
}
}  // namespace detail

inline IdHash128 hash_id(std::string_view s) {
  uint64_t a = 0x9e3779b97f4a7c15ull ^ s.size(), b = 0xc2b2ae3d27d4eb4full + s.size();
  size_t i = 0;
  for (; i + 8 <= s.size(); i += 8) {
    uint64_t w;
    std::memcpy(&w, s.data() + i, 8);
    a = (a ^ detail::fmix64(w + 0x2545f4914f6cdd1dull)) * 0x100000001b3ull;
    a = (a << 29) | (a >> 35);
    b = (b + detail::fmix64(w ^ 0x6a09e667f3bcc909ull)) * 0x9fb21c651e98df25ull;
    b ^= b >> 31;
  }
  uint64_t w = 0;
  std::memcpy(&w, s.data() + i, s.size() - i);
  a = detail::fmix64(a ^ detail::fmix64(w + 0x2545f4914f6cdd1dull));
  b = detail::fmix64(b + detail::fmix64(w ^ 0x6a09e667f3bcc909ull) + a);
  return {a, b};
}

}  // namespace esm2
