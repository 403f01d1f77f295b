"""What a run leaves on disk: run folders (video, labels, events), LeRobot datasets and batch generation."""
