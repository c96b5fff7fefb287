// SIGTERM/SIGINT handling for long runs: the handler only sets a flag; the trainer polls it at step
// boundaries, writes a checkpoint and exits cleanly (a cluster's preemption notice is a SIGTERM).
#pragma once

namespace esm2 {

class StopSignal {
 public:
  StopSignal();   // installs handlers for SIGTERM and SIGINT
  ~StopSignal();  // restores the previous handlers
  StopSignal(const StopSignal&) = delete;
  StopSignal& operator=(const StopSignal&) = delete;
  bool requested() const;
  int signal_number() const;  // 0 if none
};

}  // namespace esm2
