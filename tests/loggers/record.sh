#!/bin/sh
# A binary:// logger for tests: records its environment, then copies the
# container's stdout (fd 3) and stderr (fd 4) into DIR/stdout and DIR/stderr.
# Invoked as: record.sh dir DIR
dir=$2
/usr/bin/tr '\0' '\n' </proc/$$/environ >"$dir/env"
# Ready: close the ready pipe (before starting children that would inherit it).
exec 5>&-
/bin/cat <&3 >"$dir/stdout" &
/bin/cat <&4 >"$dir/stderr" &
wait
echo done >"$dir/finished"
