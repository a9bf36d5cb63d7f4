"""Running claimed jobs: the dispatcher (claims as many jobs as there are free slots),
slots, the lease keeper, the outcome recorder, stop flags, and one handler per kind of
job (`kinds/`): run, then after-final."""
