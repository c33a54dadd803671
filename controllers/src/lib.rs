//! Skiff's controllers: ReplicaSet, Deployment, Job, CronJob, GC, Endpoints
