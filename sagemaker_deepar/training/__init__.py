"""The training job and what it needs: data channels, backends, warm start, export, tracking."""
