// TensorBoard event files, written without TensorFlow or protobuf.
//
// File: <logdir>/events.out.tfevents.<unix seconds>.<hostname>[.<n> if that name is taken], a
// sequence of TFRecords:
//   uint64 length (LE) | uint32 masked_crc32c(length bytes) | length bytes of data | uint32 masked_crc32c(data)
//   masked_crc32c(x) = ((c >> 15) | (c << 17)) + 0xa282ead8 with c = crc32c(x) (Castagnoli, reflected 0x82F63B78)
// Each data is a serialized tensorflow.Event:
//   Event   { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5; }
//   Summary { repeated Value value = 1; }
//   Value   { string tag = 1; float simple_value = 2; }
// The first record carries file_version "brain.Event:2" (written at once); then one Event per add_scalar
// call, written at the next flush().
#pragma once
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>

#include "io/append_file.h"

namespace esm2 {

uint32_t crc32c(std::string_view data, uint32_t crc = 0);  // crc32c("123456789") == 0xE3069283
uint32_t masked_crc32c(std::string_view data);
std::string tfrecord(std::string_view data);  // the framed record

// Serialized Event messages (exposed for tests and for readers that want to verify bytes).
std::string tb_file_version_event(double wall_time);
std::string tb_scalar_event(double wall_time, int64_t step, std::string_view tag, float value);

class TensorBoardWriter {
 public:
  // Creates logdir if needed and a new event file in it; writes the file_version record.
  explicit TensorBoardWriter(const std::filesystem::path& logdir);
  ~TensorBoardWriter();  // flushes what is pending (errors there are dropped: destructors don't throw)
  // Queues one Event (wall time now) in memory.
  void add_scalar(std::string_view tag, float value, int64_t step);
  // Hands every queued Event to the kernel in one write(2); call once per step so a crash loses at
  // most the step in progress. Throws naming the file on a write failure.
  void flush();
  const std::filesystem::path& path() const { return file_.path(); }

 private:
  static std::filesystem::path new_file_name(const std::filesystem::path& logdir);
  AppendFile file_;
  std::string pending_;  // framed records not yet written
};

}  // namespace esm2
