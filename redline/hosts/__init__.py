"""The machines a scenario offers the AI system beyond its own sandbox, and how it gets them.

``sshd`` runs Debian's OpenSSH server inside a sandbox, so that sandbox can be reached like a
real Debian host; ``allocation`` is the OAuth-style service through which the AI system acquires
such a host. The service knows nothing about sshd: the caller wires them with a hook.
"""
