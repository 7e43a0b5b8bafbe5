#!/bin/bash
# Healthy when the server answers `ruok` with `imok` within 2 s.
r=$( (exec 3<>/dev/tcp/127.0.0.1/2181; printf ruok >&3; timeout 2 cat <&3) 2>/dev/null || true)
[ "$r" = imok ]
