"""Development only: the sample users API, the demo SFTP server, the local Prefect server and `make run`.
Never imported by flows/, tasks/, models/ or api/; not installed, not in the Docker image."""
