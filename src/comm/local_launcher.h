// The process side of `esm2 train --gpus N`: N worker processes on this node, one per GPU, no MPI.
// Worker r runs the same command with ESM2_RANK=r, ESM2_LOCAL_RANK=r, ESM2_WORLD_SIZE=N added to its
// environment (plus the caller's extra variables, e.g. ESM2_NCCL_ID); make_communicator recognises
// them. The launcher forwards SIGINT/SIGTERM to the workers (each runs in its own process group, so a
// terminal's Ctrl-C reaches them once, through the launcher), waits, and when a worker fails (non-zero
// exit or a signal) reports it, ends the others (SIGTERM, then SIGKILL after a grace period: they
// would otherwise wait for the dead rank in their next collective) and fails itself.
#pragma once
#include <string>
#include <vector>

namespace esm2 {

struct WorkerLaunch {
  std::string program;                 // executable (execve: no PATH search)
  std::vector<std::string> argv;       // every worker's argv, argv[0] included
  int num_workers = 1;
  std::vector<std::string> extra_env;  // "KEY=VALUE", for every worker
  double grace_s = 10;                 // after a failure: SIGTERM, this many seconds, then SIGKILL
  bool quiet_nonzero_ranks = true;     // ranks > 0 write stdout to /dev/null (stderr stays shared)
  std::string label = "esm2 train";    // prefix of the launcher's messages
};

struct WorkerOutcome {
  int exit_code = -1;  // when it exited normally, else -1
  int signal = 0;      // the signal that ended it, else 0
  bool terminated_by_launcher = false;  // ended by the launcher after another rank failed
};

struct LaunchResult {
  int exit_code = 0;     // the launcher's: 0 if every worker exited 0, else the first failure's
                         // (its exit code, or 128 + signal)
  int failed_rank = -1;  // the first rank that failed, -1 if none
  std::vector<WorkerOutcome> workers;  // [num_workers]
  std::vector<std::string> messages;   // what was printed to stderr, in order
};

// Starts the workers and waits for all of them. Throws esm2::Error if a worker cannot be started.
LaunchResult run_workers(const WorkerLaunch& launch);

// `args` without every occurrence of option `flag` and its value (`--gpus 2`, `--gpus=2`).
std::vector<std::string> without_option(const std::vector<std::string>& args, const std::string& flag);

// This process's argv as the kernel recorded it (/proc/self/cmdline) and its executable
// (/proc/self/exe): what a worker re-executes.
std::vector<std::string> own_command_line();
std::string own_executable();

}  // namespace esm2
