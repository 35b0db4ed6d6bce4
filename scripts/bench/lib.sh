# Helpers shared by the benchmark scripts; sourced, not run.

cpu_seconds() {  # utime + stime of a live process, in seconds (fields 14 and 15 of /proc/PID/stat)
  awk -v tck="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); print ($12 + $13) / tck }' "/proc/$1/stat"
}
