// A named list of plug-in factories, in registration order (the backend and transport registries:
// backend/backend_factory.h, comm/communicator.h). Entries need a `name` member.
#pragma once
#include <string>
#include <string_view>
#include <vector>

#include "core/error.h"

namespace esm2 {

template <class Entry>
class Registry {
 public:
  explicit Registry(const char* kind) : kind_(kind) {}
  // A second entry of one name is an error naming it.
  void add(Entry entry) {
    ESM2_CHECK(!find(entry.name), "{} '{}' registered twice", kind_, entry.name);
    entries_.push_back(std::move(entry));
  }
  // Null when there is none of that name.
  const Entry* find(std::string_view name) const {
    for (const Entry& e : entries_)
      if (e.name == name) return &e;
    return nullptr;
  }
  std::vector<std::string> names() const {
    std::vector<std::string> out;
    for (const Entry& e : entries_) out.push_back(e.name);
    return out;
  }
  const std::vector<Entry>& entries() const { return entries_; }

 private:
  const char* kind_;
  std::vector<Entry> entries_;
};

}  // namespace esm2
