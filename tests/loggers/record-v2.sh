#!/bin/sh
# A binary-v2:// logger for tests: says ready with a byte on fd 5 (as the
# scheme asks), then copies the container's stdout (fd 3) and stderr (fd 4)
# into DIR/stdout and DIR/stderr. Invoked as: record-v2.sh dir DIR
dir=$2
printf R >&5
exec 5>&-
/bin/cat <&3 >"$dir/stdout" &
/bin/cat <&4 >"$dir/stderr" &
wait
echo done >"$dir/finished"
