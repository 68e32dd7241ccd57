"""Development only: `make run` and what it starts (the sample users API, the demo SFTP server, the local
Prefect server), and the peers the tests and the benchmark share (the real users, a loopback OpenSSH sshd).
Never imported by flows/, tasks/, models/ or api/ (tests/test_dev_apart.py); not installed, not in the image."""
