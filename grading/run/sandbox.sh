#!/usr/bin/env bash
# The namespace half of grading/sandbox.py's sandbox, built by allow-list. Runs as the
# (mapped) root of fresh user+mount+net+pid namespaces:   sandbox.sh CONFIG WORK COMMAND...
# CONFIG (written by Sandbox.wrap, sourced here) sets tmp_mb, shm_mb, mem_kb, fsize_kb,
# nproc, the arrays `keeps` (paths the kernel may read) and `hides` (folders in those it
# may not see). A new root is built on an empty tmpfs: the system directories and `keeps`
# bound read-only at their own paths (`hides` covered by empty folders), a minimal /dev, a
# fresh /proc and /sys, a private /tmp and /dev/shm, and WORK (the only writable host
# folder). Then pivot_root: nothing else of the host filesystem exists for COMMAND.
set -eu
config=$1; work=$2; shift 2
here=$PWD
# shellcheck source=/dev/null
. "$config"
new=/dev/shm  # a mount point that always exists; covered by the new root's tmpfs
mount --make-rprivate /
mount -t tmpfs -o size=16m,mode=755 grader-root "$new"
bind() {  # bind SRC at the same path in the new root (read-only later)
  local src=$1 dst="$new$1"
  if [ -L "$src" ]; then mkdir -p "$(dirname "$dst")"; ln -sfn "$(readlink "$src")" "$dst"; return; fi
  if [ -d "$src" ]; then mkdir -p "$dst"; elif [ -e "$src" ]; then
    mkdir -p "$(dirname "$dst")"; [ -e "$dst" ] || : > "$dst"; else return 0; fi
  mount --rbind "$src" "$dst"
}
for d in /usr /bin /sbin /lib /lib32 /lib64 /libx32 /etc; do bind "$d"; done
mkdir -p "$new/tmp" "$new/proc" "$new/sys" "$new/dev/shm"
mount -t tmpfs -o "size=${tmp_mb}m,mode=1777" grader-tmp "$new/tmp"
for p in "${keeps[@]}"; do bind "$p"; done
# folders inside those that the kernel must not see: covered by an empty read-only tmpfs
for p in "${hides[@]}"; do
  if [ -d "$new$p" ]; then mount -t tmpfs -o size=4k,mode=555 grader-hidden "$new$p"; fi
done
mkdir -p "$new$work"; mount --bind "$work" "$new$work"
mount -t proc -o nosuid,nodev,noexec proc "$new/proc"
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$new/sys" 2>/dev/null || true
for n in null zero full random urandom tty; do bind "/dev/$n"; done
ln -s /proc/self/fd "$new/dev/fd"; ln -s /proc/self/fd/0 "$new/dev/stdin"
ln -s /proc/self/fd/1 "$new/dev/stdout"; ln -s /proc/self/fd/2 "$new/dev/stderr"
mount -t tmpfs -o "size=${shm_mb}m,mode=1777,nosuid,nodev" grader-shm "$new/dev/shm"
mkdir "$new/.old"
cd "$new"
pivot_root . .old
umount -l /.old
rmdir /.old
# every mount read-only except the work folder, /tmp, /dev/shm and /proc
while read -r _ _ _ _ mnt _; do
  printf -v mnt '%b' "$mnt"
  case "$mnt" in
    "$work"|"$work"/*|/tmp|/dev/shm|/proc|/proc/*|/sys) continue ;;
  esac
  mount -o remount,bind,ro "$mnt" 2>/dev/null || mount -o remount,ro "$mnt" 2>/dev/null || true
done < /proc/self/mountinfo
mount -o remount,bind,ro / 2>/dev/null || mount -o remount,ro /
cd "$here" 2>/dev/null || cd "$work"
ulimit -v "$mem_kb"; ulimit -f "$fsize_kb"; ulimit -u "$nproc"
# not exec: this shell stays PID 1 of the namespace, so that COMMAND gets ordinary signals
# (PID 1 ignores a SIGKILL sent from inside) and orphans are reaped; a death by signal N
# comes back as exit status 128+N
# (ipykernel exits when its parent is PID 1 and not the JPY_PARENT_PID it was given, an
# outside PID: without it, it polls nothing; the kernel dies with the grader anyway)
unset JPY_PARENT_PID
"$@"
exit $?
