#!/bin/sh
# greet: says hello. Version @VERSION@.
set -eu
if [ "${1:-}" = "--version" ]; then
  echo "greet @VERSION@"
  exit 0
fi
name="${1:-world}"
echo "Hello, ${name}!"
