#!/bin/sh
# Tests for greet. Usage: test_greet.sh PATH_TO_GREET
set -eu
app="$1"
fail=0
check() {
  if [ "$2" = "$3" ]; then
    echo "ok - $1"
  else
    echo "not ok - $1: expected '$3', got '$2'"
    fail=1
  fi
}
check "default name" "$("$app")" "Hello, world!"
check "given name" "$("$app" Ada)" "Hello, Ada!"
check "version is stamped" "$("$app" --version | grep -c '@VERSION@')" "0"
exit "$fail"
