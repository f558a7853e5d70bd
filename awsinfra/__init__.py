"""One AWS layer for every stack of the project: clients (:mod:`awsinfra.clients`), one
``error_code`` (:mod:`awsinfra.errors`) and CloudFormation load/resolve/deploy/wait/destroy with
the completion of what a CloudFormation implementation skipped (:mod:`awsinfra.cloudformation`,
per-type completers in :mod:`awsinfra.completers`). See docs/extending-aws.md."""
