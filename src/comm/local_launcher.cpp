#include "comm/local_launcher.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <thread>

#include "core/error.h"

extern char** environ;

namespace esm2 {

namespace {

using Clock = std::chrono::steady_clock;

// The signal to forward (0: none). A handler may only touch lock-free atomics: this is the one
// process-wide state it needs, as in core/signals.cpp.
std::atomic<int> g_forward_signal{0};
void on_signal(int sig) { g_forward_signal.store(sig); }

// Installs the forwarding handlers for the launcher's lifetime.
class ForwardSignals {
 public:
  ForwardSignals() {
    g_forward_signal.store(0);
    struct sigaction sa{};
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, &old_term_);
    sigaction(SIGINT, &sa, &old_int_);
  }
  ~ForwardSignals() {
    sigaction(SIGTERM, &old_term_, nullptr);
    sigaction(SIGINT, &old_int_, nullptr);
  }
  ForwardSignals(const ForwardSignals&) = delete;
  ForwardSignals& operator=(const ForwardSignals&) = delete;

 private:
  struct sigaction old_term_{}, old_int_{};
};

bool is_launch_variable(const char* kv) {
  for (const char* k : {"ESM2_RANK=", "ESM2_WORLD_SIZE=", "ESM2_LOCAL_RANK="})
    if (std::strncmp(kv, k, std::strlen(k)) == 0) return true;
  return false;
}

std::string describe(const WorkerOutcome& o) {
  if (o.signal) return fmt::format("signal {} ({})", o.signal, strsignal(o.signal));
  return fmt::format("status {}", o.exit_code);
}

// Everything a child needs, built before fork: between fork and exec only async-signal-safe calls
// are allowed (the parent may have threads, e.g. NCCL's bootstrap root).
struct ChildImage {
  std::vector<std::string> env_store, argv_store;
  std::vector<char*> envp, argv;
};

ChildImage child_image(const WorkerLaunch& l, int rank) {
  ChildImage c;
  for (char** e = environ; e && *e; ++e) {
    const std::string kv = *e;
    bool overridden = is_launch_variable(*e);
    for (const std::string& x : l.extra_env)
      overridden = overridden || kv.compare(0, x.find('=') + 1, x, 0, x.find('=') + 1) == 0;
    if (!overridden) c.env_store.push_back(kv);
  }
  c.env_store.push_back(fmt::format("ESM2_RANK={}", rank));
  c.env_store.push_back(fmt::format("ESM2_LOCAL_RANK={}", rank));
  c.env_store.push_back(fmt::format("ESM2_WORLD_SIZE={}", l.num_workers));
  for (const std::string& x : l.extra_env) c.env_store.push_back(x);
  c.argv_store = l.argv;
  for (auto& s : c.env_store) c.envp.push_back(s.data());
  c.envp.push_back(nullptr);
  for (auto& s : c.argv_store) c.argv.push_back(s.data());
  c.argv.push_back(nullptr);
  return c;
}

}  // namespace

LaunchResult run_workers(const WorkerLaunch& l) {
  ESM2_CHECK(l.num_workers >= 1, "{}: --gpus must be >= 1 (got {})", l.label, l.num_workers);
  ESM2_CHECK(!l.argv.empty(), "{}: no worker command", l.label);
  LaunchResult res;
  res.workers.resize(size_t(l.num_workers));
  auto say = [&](const std::string& m) {
    std::fprintf(stderr, "%s\n", m.c_str());
    std::fflush(stderr);
    res.messages.push_back(m);
  };

  ForwardSignals forward;
  const pid_t parent = getpid();
  std::vector<pid_t> pids(size_t(l.num_workers), -1);
  std::vector<bool> alive(size_t(l.num_workers), false);
  auto signal_alive = [&](int sig) {
    for (size_t r = 0; r < pids.size(); ++r)
      if (alive[r]) kill(-pids[r], sig);  // the worker's process group: its own children too
  };

  for (int r = 0; r < l.num_workers; ++r) {
    ChildImage img = child_image(l, r);
    const std::string exec_failed = fmt::format("{}: rank {}: cannot execute {}\n", l.label, r, l.program);
    std::fflush(stdout);
    std::fflush(stderr);
    // A SIGTERM for a worker that arrives between fork and execve would reach the forwarding handler it
    // inherited and be lost (the worker then ran on until the SIGKILL after the grace period): the
    // forwarded signals stay blocked across fork, and the child unblocks them only after restoring
    // the default handlers, so a pending one ends it.
    sigset_t forwarded, mask_before;
    sigemptyset(&forwarded);
    sigaddset(&forwarded, SIGTERM);
    sigaddset(&forwarded, SIGINT);
    pthread_sigmask(SIG_BLOCK, &forwarded, &mask_before);
    const pid_t pid = fork();
    if (pid != 0) pthread_sigmask(SIG_SETMASK, &mask_before, nullptr);
    if (pid < 0) {
      const std::string why = std::strerror(errno);
      signal_alive(SIGKILL);
      for (size_t q = 0; q < pids.size(); ++q)
        if (alive[q]) waitpid(pids[q], nullptr, 0);
      fail("{}: cannot start worker {} of {}: fork: {}", l.label, r, l.num_workers, why);
    }
    if (pid == 0) {
      struct sigaction dfl{};
      dfl.sa_handler = SIG_DFL;
      sigemptyset(&dfl.sa_mask);
      sigaction(SIGTERM, &dfl, nullptr);
      sigaction(SIGINT, &dfl, nullptr);
      pthread_sigmask(SIG_SETMASK, &mask_before, nullptr);
      setpgid(0, 0);
      // A launcher killed outright (SIGKILL) must not leave workers behind.
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (getppid() != parent) _exit(127);
      if (r > 0 && l.quiet_nonzero_ranks) {
        const int devnull = open("/dev/null", O_WRONLY);
        if (devnull >= 0) dup2(devnull, STDOUT_FILENO);
      }
      execve(l.program.c_str(), img.argv.data(), img.envp.data());
      (void)!write(STDERR_FILENO, exec_failed.data(), exec_failed.size());
      _exit(127);
    }
    setpgid(pid, pid);  // also here: the parent may signal the group before the child ran setpgid
    pids[size_t(r)] = pid;
    alive[size_t(r)] = true;
  }

  int live = l.num_workers;
  Clock::time_point kill_at{};
  bool killed = false;
  while (live > 0) {
    for (int r = 0; r < l.num_workers; ++r) {
      if (!alive[size_t(r)]) continue;
      int st = 0;
      const pid_t got = waitpid(pids[size_t(r)], &st, WNOHANG);
      if (got == 0 || (got < 0 && errno == EINTR)) continue;
      alive[size_t(r)] = false;
      --live;
      WorkerOutcome& o = res.workers[size_t(r)];
      if (got > 0 && WIFEXITED(st)) o.exit_code = WEXITSTATUS(st);
      if (got > 0 && WIFSIGNALED(st)) o.signal = WTERMSIG(st);
      if (got < 0) o.exit_code = 127;  // lost track of it: count as a failure
      const bool failed = o.signal != 0 || o.exit_code != 0;
      if (res.failed_rank >= 0) {
        o.terminated_by_launcher = true;
        say(fmt::format("{}: rank {} exited with {} (after rank {} failed)", l.label, r, describe(o), res.failed_rank));
      } else if (failed) {
        res.failed_rank = r;
        res.exit_code = o.signal ? 128 + o.signal : o.exit_code;
        say(fmt::format("{}: rank {} exited with {}; terminating the other {} rank(s)", l.label, r, describe(o), live));
        signal_alive(SIGTERM);
        kill_at = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(l.grace_s));
      }
    }
    if (const int sig = g_forward_signal.exchange(0)) signal_alive(sig);
    if (res.failed_rank >= 0 && !killed && live > 0 && Clock::now() >= kill_at) {
      say(fmt::format("{}: {} rank(s) still running {:g} s after SIGTERM; sending SIGKILL", l.label, live, l.grace_s));
      signal_alive(SIGKILL);
      killed = true;
    }
    if (live > 0) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return res;
}

std::vector<std::string> without_option(const std::vector<std::string>& args, const std::string& flag) {
  std::vector<std::string> out;
  for (size_t i = 0; i < args.size(); ++i) {
    if (args[i] == flag) {
      ++i;  // and its value
      continue;
    }
    if (args[i].rfind(flag + "=", 0) == 0) continue;
    out.push_back(args[i]);
  }
  return out;
}

std::vector<std::string> own_command_line() {
  std::ifstream f("/proc/self/cmdline", std::ios::binary);
  ESM2_CHECK(f.good(), "/proc/self/cmdline: cannot read this process's command line");
  const std::string all((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  std::vector<std::string> args;
  size_t b = 0;
  for (size_t i = 0; i < all.size(); ++i)
    if (all[i] == '\0') {
      args.push_back(all.substr(b, i - b));
      b = i + 1;
    }
  if (b < all.size()) args.push_back(all.substr(b));
  return args;
}

std::string own_executable() {
  char buf[4096];
  const ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
  ESM2_CHECK(n > 0, "/proc/self/exe: cannot resolve this program's path: {}", std::strerror(errno));
  return std::string(buf, size_t(n));
}

}  // namespace esm2
