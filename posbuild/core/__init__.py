"""core: values — digests, labels, targets, actions, execution records, the workspace's names.

Owns what every phase passes to the next, and nothing that does I/O beyond hashing bytes it is
given.

May import: posbuild.errors.
"""
