"""DeepAR real-time serving beyond SageMaker: ECS Fargate behind a load balancer with autoscaling
(``template.yaml``, ``python -m ecs deploy|destroy``) and the same shape on one machine
(``python -m ecs local``). See docs/ecs.md."""
