"""What a CloudFormation implementation may skip in ecs/template.yaml, completed through each
service's own API (registered on the awsinfra layer; docs/extending-aws.md).

moto 5.2.5's CloudFormation skips Application Auto Scaling and ``AWS::EC2::SecurityGroupEgress``
altogether, records ``AWS::EC2::SecurityGroupIngress`` without an id, and creates the cluster,
task definition, service, load balancer, target group and security groups while ignoring some of
their properties (the service's load balancer, network, launch type and circuit breaker; the task
definition's awsvpc mode, size and roles; attributes; egress rules). The ``missing`` completers
run wherever CloudFormation left no resource; the ``offline`` ones only against a moto server
(AWS_ENDPOINT_URL), where they set what was ignored. On AWS they find everything in place.
"""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from awsinfra.cloudformation import Completed, Resolver, attribute, completer, deleter
from awsinfra.errors import error_code


def _list(value: Any) -> list[str]:
    """A ``List<...>`` parameter reaches the properties as "a,b"."""
    if isinstance(value, str):
        return [item for item in value.split(",") if item]
    return [str(item) for item in value]


# ---------------------------------------------------------------- attributes (!GetAtt), from the ids


@attribute("AWS::ECS::Service", "Name")
def _service_name(aws: Any, arn: str) -> str:
    return arn.rsplit("/", 1)[-1]


@attribute("AWS::ElasticLoadBalancingV2::LoadBalancer", "LoadBalancerFullName")
def _load_balancer_full_name(aws: Any, arn: str) -> str:
    return arn.split(":loadbalancer/", 1)[1]  # app/<name>/<id>


@attribute("AWS::ElasticLoadBalancingV2::LoadBalancer", "DNSName")
def _load_balancer_dns(aws: Any, arn: str) -> str:
    return str(aws("elbv2").describe_load_balancers(LoadBalancerArns=[arn])["LoadBalancers"][0]["DNSName"])


@attribute("AWS::ElasticLoadBalancingV2::TargetGroup", "TargetGroupFullName")
def _target_group_full_name(aws: Any, arn: str) -> str:
    return arn.rsplit(":", 1)[1]  # targetgroup/<name>/<id>


@attribute("AWS::EC2::SecurityGroup", "GroupId")
def _group_id(aws: Any, group_id: str) -> str:
    return group_id


# ---------------------------------------------------------------- Application Auto Scaling (skipped)


def target_id(namespace: str, resource: str, dimension: str) -> str:
    """A scalable target's id as CloudFormation's Ref gives it."""
    return f"{resource}|{dimension}|{namespace}"


@completer("AWS::ApplicationAutoScaling::ScalableTarget")
def scalable_target(aws: Any, logical: str, props: dict, resolver: Resolver) -> Completed:
    """Registered with the template's min/max (register_scalable_target is an upsert)."""
    scaling = aws("application-autoscaling")
    namespace, resource, dimension = props["ServiceNamespace"], props["ResourceId"], props["ScalableDimension"]
    wanted = {"MinCapacity": int(props["MinCapacity"]), "MaxCapacity": int(props["MaxCapacity"])}
    found = scaling.describe_scalable_targets(
        ServiceNamespace=namespace, ResourceIds=[resource], ScalableDimension=dimension
    )["ScalableTargets"]
    pid = target_id(namespace, resource, dimension)
    if found and all(found[0][k] == v for k, v in wanted.items()):
        return Completed(pid)
    extra = {"RoleARN": props["RoleARN"]} if props.get("RoleARN") else {}
    scaling.register_scalable_target(
        ServiceNamespace=namespace, ResourceId=resource, ScalableDimension=dimension, **wanted, **extra
    )
    return Completed(pid, "updated" if found else "created", tuple(wanted) if found else ())


@deleter("AWS::ApplicationAutoScaling::ScalableTarget")
def _deregister_target(aws: Any, pid: str) -> str:
    resource, dimension, namespace = pid.split("|")
    try:
        aws("application-autoscaling").deregister_scalable_target(
            ServiceNamespace=namespace, ResourceId=resource, ScalableDimension=dimension
        )
    except ClientError as error:
        if error_code(error) == "ObjectNotFoundException":
            return "absent"
        raise
    return "deleted"


def _tracking(config: dict) -> dict:
    """A target-tracking configuration as the API takes (and describes) it."""
    out: dict[str, Any] = {"TargetValue": float(config["TargetValue"])}
    for key in ("ScaleInCooldown", "ScaleOutCooldown"):
        if key in config:
            out[key] = int(config[key])
    if "DisableScaleIn" in config:
        out["DisableScaleIn"] = str(config["DisableScaleIn"]).lower() == "true"
    metric = config.get("PredefinedMetricSpecification")
    if metric:
        out["PredefinedMetricSpecification"] = {
            k: str(v) for k, v in metric.items() if k in ("PredefinedMetricType", "ResourceLabel")
        }
    return out


@completer("AWS::ApplicationAutoScaling::ScalingPolicy")
def scaling_policy(aws: Any, logical: str, props: dict, resolver: Resolver) -> Completed:
    """The policy on its target (put_scaling_policy is an upsert); its ARN is the id."""
    scaling = aws("application-autoscaling")
    resource, dimension, namespace = str(props["ScalingTargetId"]).split("|")
    name, config = props["PolicyName"], _tracking(props["TargetTrackingScalingPolicyConfiguration"])
    found = [  # by name here too: moto ignores PolicyNames
        policy
        for policy in scaling.describe_scaling_policies(
            ServiceNamespace=namespace, ResourceId=resource, ScalableDimension=dimension, PolicyNames=[name]
        )["ScalingPolicies"]
        if policy["PolicyName"] == name
    ]
    if found and _tracking(found[0].get("TargetTrackingScalingPolicyConfiguration", {})) == config:
        return Completed(found[0]["PolicyARN"])
    arn = scaling.put_scaling_policy(
        PolicyName=name,
        ServiceNamespace=namespace,
        ResourceId=resource,
        ScalableDimension=dimension,
        PolicyType=props["PolicyType"],
        TargetTrackingScalingPolicyConfiguration=config,
    )["PolicyARN"]
    return Completed(
        arn, "updated" if found else "created", ("TargetTrackingScalingPolicyConfiguration",) if found else ()
    )


@deleter("AWS::ApplicationAutoScaling::ScalingPolicy")
def _delete_policy(aws: Any, arn: str) -> str:
    scaling = aws("application-autoscaling")
    for namespace in ("ecs",):
        for policy in scaling.describe_scaling_policies(ServiceNamespace=namespace)["ScalingPolicies"]:
            if policy["PolicyARN"] == arn:
                scaling.delete_scaling_policy(
                    PolicyName=policy["PolicyName"],
                    ServiceNamespace=namespace,
                    ResourceId=policy["ResourceId"],
                    ScalableDimension=policy["ScalableDimension"],
                )
                return "deleted"
    return "absent"


# ---------------------------------------------------------------- security group rules


def _rule(props: dict, peer_key: str) -> dict:
    """One IpPermission from a rule resource's (or an inline rule's) properties."""
    permission: dict[str, Any] = {"IpProtocol": str(props["IpProtocol"])}
    if str(props["IpProtocol"]) != "-1":
        permission["FromPort"], permission["ToPort"] = int(props["FromPort"]), int(props["ToPort"])
    if props.get(peer_key):
        permission["UserIdGroupPairs"] = [{"GroupId": props[peer_key]}]
    if props.get("CidrIp"):
        permission["IpRanges"] = [{"CidrIp": props["CidrIp"]}]
    return permission


def _matches(found: dict, wanted: dict) -> bool:
    if found["IpProtocol"] != wanted["IpProtocol"]:
        return False
    if wanted["IpProtocol"] != "-1" and (found.get("FromPort"), found.get("ToPort")) != (
        wanted["FromPort"],
        wanted["ToPort"],
    ):
        return False
    groups = {p["GroupId"] for p in found.get("UserIdGroupPairs", [])}
    cidrs = {r["CidrIp"] for r in found.get("IpRanges", [])}
    return all(p["GroupId"] in groups for p in wanted.get("UserIdGroupPairs", [])) and all(
        r["CidrIp"] in cidrs for r in wanted.get("IpRanges", [])
    )


def _group(aws: Any, group_id: str) -> dict:
    return dict(aws("ec2").describe_security_groups(GroupIds=[group_id])["SecurityGroups"][0])


def _rule_id(aws: Any, group_id: str, egress: bool, wanted: dict) -> str:
    """The rule's id (sgr-...), or group|direction|protocol|port|peer where the API gives none."""
    try:
        rules = aws("ec2").describe_security_group_rules(Filters=[{"Name": "group-id", "Values": [group_id]}])
        for rule in rules["SecurityGroupRules"]:
            peer = rule.get("ReferencedGroupInfo", {}).get("GroupId") or rule.get("CidrIpv4")
            wanted_peer = (wanted.get("UserIdGroupPairs") or wanted.get("IpRanges") or [{}])[0]
            if (
                bool(rule.get("IsEgress")) == egress
                and rule.get("IpProtocol") == wanted["IpProtocol"]
                and rule.get("FromPort") == wanted.get("FromPort", -1)
                and peer in (wanted_peer.get("GroupId"), wanted_peer.get("CidrIp"))
            ):
                return str(rule["SecurityGroupRuleId"])
    except ClientError:
        pass
    peer = (wanted.get("UserIdGroupPairs") or wanted.get("IpRanges") or [{}])[0]
    return "|".join(
        [
            group_id,
            "egress" if egress else "ingress",
            wanted["IpProtocol"],
            str(wanted.get("FromPort", "")),
            *peer.values(),
        ]
    )


def _ensure_rule(aws: Any, props: dict, egress: bool) -> Completed:
    group_id = props["GroupId"]
    wanted = _rule(props, "DestinationSecurityGroupId" if egress else "SourceSecurityGroupId")
    found = _group(aws, group_id)["IpPermissionsEgress" if egress else "IpPermissions"]
    if any(_matches(rule, wanted) for rule in found):
        return Completed(_rule_id(aws, group_id, egress, wanted))
    authorize = aws("ec2").authorize_security_group_egress if egress else aws("ec2").authorize_security_group_ingress
    authorize(GroupId=group_id, IpPermissions=[wanted])
    return Completed(_rule_id(aws, group_id, egress, wanted), "created")


@completer("AWS::EC2::SecurityGroupEgress")
def group_egress(aws: Any, logical: str, props: dict, resolver: Resolver) -> Completed:
    return _ensure_rule(aws, props, egress=True)


@completer("AWS::EC2::SecurityGroupIngress")
def group_ingress(aws: Any, logical: str, props: dict, resolver: Resolver) -> Completed:
    """moto creates the rule but gives it no id: found here (or added) and named."""
    return _ensure_rule(aws, props, egress=False)


def _revoke_rule(aws: Any, pid: str, egress: bool) -> str:
    group_id = pid.split("|", 1)[0]
    try:
        if pid.startswith("sgr-"):
            rules = aws("ec2").describe_security_group_rules(SecurityGroupRuleIds=[pid])["SecurityGroupRules"]
            if not rules:
                return "absent"
            group_id = rules[0]["GroupId"]
            revoke = aws("ec2").revoke_security_group_egress if egress else aws("ec2").revoke_security_group_ingress
            revoke(GroupId=group_id, SecurityGroupRuleIds=[pid])
            return "deleted"
    except ClientError as error:
        if "NotFound" in error_code(error):
            return "absent"
        raise
    return "absent"


@deleter("AWS::EC2::SecurityGroupEgress")
def _revoke_egress(aws: Any, pid: str) -> str:
    return _revoke_rule(aws, pid, egress=True)


@deleter("AWS::EC2::SecurityGroupIngress")
def _revoke_ingress(aws: Any, pid: str) -> str:
    return _revoke_rule(aws, pid, egress=False)


@completer("AWS::EC2::SecurityGroup", when="offline")
def group_inline_egress(aws: Any, logical: str, props: dict, resolver: Resolver) -> Completed:
    """Offline: inline egress rules replace the default allow-all (moto keeps it and adds none)."""
    group_id = resolver.physical[logical]
    inline = [_rule(rule, "DestinationSecurityGroupId") for rule in props.get("SecurityGroupEgress", [])]
    if not inline:
        return Completed(group_id)
    found = _group(aws, group_id)["IpPermissionsEgress"]
    # Rules of separate AWS::EC2::SecurityGroupEgress resources on this group stay.
    separate = [
        _rule(r["Properties"], "DestinationSecurityGroupId")
        for r in resolver.template["Resources"].values()
        if r["Type"] == "AWS::EC2::SecurityGroupEgress"
        and r["Properties"].get("GroupId") in ({"Fn::GetAtt": [logical, "GroupId"]}, {"Ref": logical})
    ]
    extra = [
        rule
        for rule in found
        if not any(_matches(rule, w) for w in inline)
        and not any(_matches(rule, {**w, "UserIdGroupPairs": rule.get("UserIdGroupPairs", [])}) for w in separate)
    ]
    missing = [w for w in inline if not any(_matches(rule, w) for rule in found)]
    ec2 = aws("ec2")
    if extra:
        ec2.revoke_security_group_egress(GroupId=group_id, IpPermissions=extra)
    if missing:
        ec2.authorize_security_group_egress(GroupId=group_id, IpPermissions=missing)
    changed = ("SecurityGroupEgress",) if extra or missing else ()
    return Completed(group_id, "updated" if changed else "present", changed)


# ---------------------------------------------------------------- load balancing (attributes)


def _elbv2_attributes(name: str, noun: str) -> None:
    """Register the completer of an ``AWS::ElasticLoadBalancingV2::<name>``'s attributes (the template's
    ``<name>Attributes``, read and set by elbv2's ``describe_/modify_<noun>_attributes`` with ``<name>Arn``):
    those that differ are set, each change named by its key."""

    def complete(aws: Any, logical: str, props: dict, resolver: Resolver) -> Completed:
        elbv2, resource = aws("elbv2"), {f"{name}Arn": resolver.physical[logical]}
        wanted = {str(a["Key"]): str(a["Value"]).lower() for a in props.get(f"{name}Attributes", [])}
        described = getattr(elbv2, f"describe_{noun}_attributes")(**resource)["Attributes"]
        current = {a["Key"]: str(a["Value"]).lower() for a in described}
        changes = {k: v for k, v in wanted.items() if current.get(k) != v}
        if changes:
            attributes = [{"Key": k, "Value": v} for k, v in changes.items()]
            getattr(elbv2, f"modify_{noun}_attributes")(**resource, Attributes=attributes)
        return Completed(resource[f"{name}Arn"], "updated" if changes else "present", tuple(sorted(changes)))

    completer(f"AWS::ElasticLoadBalancingV2::{name}", when="offline")(complete)


_elbv2_attributes("LoadBalancer", "load_balancer")
_elbv2_attributes("TargetGroup", "target_group")


# ---------------------------------------------------------------- ECS


@completer("AWS::ECS::Cluster", when="offline")
def cluster_settings(aws: Any, logical: str, props: dict, resolver: Resolver) -> Completed:
    name = resolver.physical[logical]
    wanted = [{"name": s["Name"], "value": str(s["Value"])} for s in props.get("ClusterSettings", [])]
    current = aws("ecs").describe_clusters(clusters=[name], include=["SETTINGS"])["clusters"][0].get("settings", [])
    if all(setting in current for setting in wanted):
        return Completed(name)
    aws("ecs").update_cluster(cluster=name, settings=wanted)
    return Completed(name, "updated", ("ClusterSettings",))


def _container(definition: dict) -> dict:
    """A CloudFormation container definition in the API's spelling (the keys this template uses)."""

    def lower(key: str) -> str:
        return key[0].lower() + key[1:]

    out: dict[str, Any] = {}
    for key, value in definition.items():
        if key == "HealthCheck":
            out["healthCheck"] = {lower(k): (v if k == "Command" else int(v)) for k, v in value.items()}
        elif key == "PortMappings":
            out["portMappings"] = [
                {lower(k): int(v) if k == "ContainerPort" else v for k, v in m.items()} for m in value
            ]
        elif key == "Environment":
            out["environment"] = [{"name": e["Name"], "value": str(e["Value"])} for e in value]
        elif key == "LogConfiguration":
            out["logConfiguration"] = {"logDriver": value["LogDriver"], "options": dict(value.get("Options", {}))}
        elif key == "StopTimeout":
            out["stopTimeout"] = int(value)
        elif key == "Essential":
            out["essential"] = str(value).lower() == "true"
        else:
            out[lower(key)] = value
    return out


def task_definition_request(props: dict) -> dict:
    request: dict[str, Any] = {
        "family": props["Family"],
        "containerDefinitions": [_container(d) for d in props["ContainerDefinitions"]],
        "networkMode": props["NetworkMode"],
        "requiresCompatibilities": list(props["RequiresCompatibilities"]),
        "cpu": str(props["Cpu"]),
        "memory": str(props["Memory"]),
        "executionRoleArn": props["ExecutionRoleArn"],
        "taskRoleArn": props["TaskRoleArn"],
    }
    if "RuntimePlatform" in props:
        platform = props["RuntimePlatform"]
        request["runtimePlatform"] = {
            "operatingSystemFamily": platform["OperatingSystemFamily"],
            "cpuArchitecture": platform["CpuArchitecture"],
        }
    return request


TASK_KEYS = ("networkMode", "cpu", "memory", "executionRoleArn", "taskRoleArn")


@completer("AWS::ECS::TaskDefinition", when="offline")
def task_definition(aws: Any, logical: str, props: dict, resolver: Resolver) -> Completed:
    """Offline: moto registers the containers but not awsvpc, the size or the roles: a revision with
    everything is registered (the service completer then runs it)."""
    request = task_definition_request(props)
    # The family's latest revision: a previous deploy's completed one, or what moto just registered.
    current = aws("ecs").describe_task_definition(taskDefinition=request["family"])["taskDefinition"]
    if _same_task(current, request):
        return Completed(current["taskDefinitionArn"])
    revision = aws("ecs").register_task_definition(**request)["taskDefinition"]["taskDefinitionArn"]
    different = tuple(k for k in TASK_KEYS if current.get(k) != request[k])
    return Completed(revision, "updated", different or ("requiresCompatibilities",))


def _same_task(current: dict, request: dict) -> bool:
    if "FARGATE" not in current.get("requiresCompatibilities", []) or any(
        current.get(k) != request[k] for k in TASK_KEYS
    ):
        return False
    containers = {c["name"]: c for c in current.get("containerDefinitions", [])}
    return all(
        containers.get(c["name"], {}).get(key) == c.get(key)
        for c in request["containerDefinitions"]
        for key in ("image", "command", "environment", "healthCheck", "portMappings")
    )


def service_request(props: dict) -> dict:
    deployment = props.get("DeploymentConfiguration", {})
    breaker = deployment.get("DeploymentCircuitBreaker", {})
    network = props["NetworkConfiguration"]["AwsvpcConfiguration"]
    return {
        "loadBalancers": [
            {
                "targetGroupArn": lb["TargetGroupArn"],
                "containerName": lb["ContainerName"],
                "containerPort": int(lb["ContainerPort"]),
            }
            for lb in props.get("LoadBalancers", [])
        ],
        "networkConfiguration": {
            "awsvpcConfiguration": {
                "subnets": _list(network["Subnets"]),
                "securityGroups": _list(network["SecurityGroups"]),
                "assignPublicIp": network.get("AssignPublicIp", "DISABLED"),
            }
        },
        "deploymentConfiguration": {
            "maximumPercent": int(deployment.get("MaximumPercent", 200)),
            "minimumHealthyPercent": int(deployment.get("MinimumHealthyPercent", 100)),
            "deploymentCircuitBreaker": {
                "enable": str(breaker.get("Enable", False)).lower() == "true",
                "rollback": str(breaker.get("Rollback", False)).lower() == "true",
            },
        },
        "healthCheckGracePeriodSeconds": int(props.get("HealthCheckGracePeriodSeconds", 0)),
    }


@completer("AWS::ECS::Service", when="offline")
def service(aws: Any, logical: str, props: dict, resolver: Resolver) -> Completed:
    """Offline: moto's service keeps only its name, cluster, task definition and count. A service's
    launch type cannot change, so a service moto made for EC2 is created again as FARGATE with
    every property (same name, same ARN); otherwise what differs is updated."""
    arn = resolver.physical[logical]
    ecs, cluster, name = aws("ecs"), props["Cluster"], arn.rsplit("/", 1)[-1]
    wanted = service_request(props)
    task = props["TaskDefinition"]  # resolved after the task definition's completer: its latest revision
    current = ecs.describe_services(cluster=cluster, services=[name])["services"][0]
    applied: list[str] = []
    if current.get("launchType") != props.get("LaunchType", "FARGATE"):
        ecs.delete_service(cluster=cluster, service=name, force=True)
        ecs.create_service(
            cluster=cluster,
            serviceName=name,
            taskDefinition=task,
            desiredCount=int(current.get("desiredCount", props.get("DesiredCount", 1))),
            launchType=props.get("LaunchType", "FARGATE"),
            propagateTags=props.get("PropagateTags", "NONE"),
            **wanted,
        )
        applied.append("launchType")
        current = ecs.describe_services(cluster=cluster, services=[name])["services"][0]
    changes = {k: v for k, v in wanted.items() if current.get(k) != v}
    if current.get("taskDefinition") != task:
        changes["taskDefinition"] = task
    if changes:
        ecs.update_service(cluster=cluster, service=name, **changes)
    applied += sorted(changes)
    return Completed(arn, "updated" if applied else "present", tuple(applied))
