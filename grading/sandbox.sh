#!/usr/bin/env bash
# The namespace half of grading/sandbox.py's sandbox. Runs as the (mapped) root of fresh
# user+mount+net+pid namespaces:   sandbox.sh CONFIG WORK COMMAND...
# CONFIG (written by Sandbox.wrap, sourced here) sets shm_mb, mem_kb, fsize_kb and the
# arrays keeps, hides, inner_hides. Kept paths are bound aside, the hidden ones covered
# with empty tmpfs, the kept ones bound back; then every mount but WORK (and /proc, /sys,
# /dev) is made read-only, the limits are set, and COMMAND runs.
set -eu
config=$1; work=$2; shift 2
# shellcheck source=/dev/null
. "$config"
stage=/dev/shm/.grader-keep
hide() { for h in "$@"; do
  if [ -d "$h" ]; then mount -t tmpfs -o size=1m,mode=755 grader-hidden "$h"; fi; done; }
mount -t tmpfs -o "size=${shm_mb}m,mode=1777" grader-shm /dev/shm
i=0; for p in "${keeps[@]}"; do
  mkdir -p "$stage/$i"; mount --rbind "$p" "$stage/$i"; i=$((i+1)); done
hide "${hides[@]}"
i=0; for p in "${keeps[@]}"; do
  mkdir -p "$p"; mount --rbind "$stage/$i" "$p"; umount -R -l "$stage/$i"; i=$((i+1)); done
hide "${inner_hides[@]}"
while read -r _ _ _ _ mnt _; do
  printf -v mnt '%b' "$mnt"
  case "$mnt" in
    "$work"|"$work"/*|/proc|/proc/*|/sys|/sys/*|/dev|/dev/pts|/dev/pts/*|/dev/shm|/dev/mqueue)
      continue ;;
  esac
  mount -o remount,bind,ro "$mnt" 2>/dev/null || true
done < /proc/self/mountinfo
mount -o remount,bind,ro /
ulimit -v "$mem_kb"; ulimit -f "$fsize_kb"
exec "$@"
