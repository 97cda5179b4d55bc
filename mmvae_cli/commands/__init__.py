"""The long commands below the click layer: a request (the flags by name) is checked into a job, which
writes nothing until its `run()`."""
