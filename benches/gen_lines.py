#!/usr/bin/env python3
"""Writes N JSON log lines of about 350 bytes, split over F files.

usage: gen_lines.py DIR N FILES
"""
import json, os, sys

out_dir, n, files = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
os.makedirs(out_dir, exist_ok=True)
tools = ["bash", "read_file", "write_file", "web_search", "query_db"]
per = n // files
for f in range(files):
    with open(os.path.join(out_dir, f"agent-{f}.jsonl"), "w") as fh:
        buf = []
        for i in range(per):
            seq = f * per + i
            rec = {
                "timestamp": f"2026-11-28T10:{(seq // 60000) % 60:02d}:{(seq // 1000) % 60:02d}.{seq % 1000:03d}Z",
                "agent": "bench-agent",
                "session_id": f"5d0c1f5e-7c2a-4a51-a0a4-{seq // 1000:012d}",
                "user": "alice@example.com",
                "event_type": "TOOL_CALL_PRE" if seq % 2 == 0 else "TOOL_CALL_POST",
                "tool": tools[seq % len(tools)],
                "content": f"ran {tools[seq % len(tools)]} with arguments for step {seq}",
                "cwd": "/srv/agents/bench",
                "seq": seq,
                "pad": "x" * 60,
            }
            buf.append(json.dumps(rec, separators=(",", ":")))
            if len(buf) == 10000:
                fh.write("\n".join(buf) + "\n")
                buf = []
        if buf:
            fh.write("\n".join(buf) + "\n")
