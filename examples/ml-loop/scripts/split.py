"""Split the cleaned rows deterministically: every fourth row goes to validation."""

import sys

source, train_out, validation_out = sys.argv[1:4]
with open(source) as f:
    header, *rows = f.read().splitlines()
train = [r for i, r in enumerate(rows) if i % 4 != 3]
validation = [r for i, r in enumerate(rows) if i % 4 == 3]
for path, part in ((train_out, train), (validation_out, validation)):
    with open(path, "w") as f:
        f.write(header + "\n" + "".join(r + "\n" for r in part))
