#!/bin/sh
# A deliberately slow binary:// logger: copies the container's stdout (fd 3)
# to DIR/stdout 64 KiB at a time with a pause between chunks.
# Invoked as: slow.sh dir DIR
dir=$2
exec 5>&-
/bin/cat <&4 >"$dir/stderr" &
while :; do
  n=$(/bin/dd bs=65536 count=1 iflag=fullblock 2>/dev/null <&3 | /usr/bin/tee -a "$dir/stdout" | /usr/bin/wc -c)
  [ "$n" -eq 0 ] && break
  /bin/sleep 0.002
done
wait
echo done >"$dir/finished"
