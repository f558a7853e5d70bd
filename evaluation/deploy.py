"""Host a trained model on a SageMaker endpoint, and change or remove it.

    python -m evaluation.deploy create --name E --model-data s3://.../model.tar.gz --image <ecr-uri>   model + config + endpoint
    python -m evaluation.deploy create --name E --multi-model --model-data s3://bucket/models/ --image <ecr-uri>
                                         multi-model endpoint: every model.tar.gz under the prefix (invoke --target-model)
    python -m evaluation.deploy update --name E --model-data s3://.../other.tar.gz [--canary 10]       blue/green to a new model
    python -m evaluation.deploy ab     --name E --model-data A.tar.gz B.tar.gz --weights 0.9 0.1      A/B production variants
    python -m evaluation.deploy shift  --name E --weight variant-1=0.5 --weight variant-2=0.5          move traffic between variants
    python -m evaluation.deploy delete --name E                                                        endpoint, its config, its models

Each waits for the endpoint (--timeout) and prints status changes. SageMaker updates endpoints
blue/green: the new fleet takes traffic only once healthy, then the old one goes (with --canary N,
N % first). Local mode (--local) serves one variant in a container on 127.0.0.1 for as long as the
process that deployed it lives (the SDK keeps local endpoints in memory), so `update` there means
stop, then start the new model; `ab`/`shift` need SageMaker. evaluation.workflow chains the
steps in one process.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

from awsinfra.errors import error_code
from sagemaker_deepar.errors import UserError

from . import common


@dataclass(frozen=True)
class Fleet:
    """Where a variant runs and how long its endpoint may take: the typed input of ``variant`` and
    ``wait_in_service`` (the commands build it from their options; mlops builds it directly)."""

    instance_type: str = common.DEFAULT_INSTANCE_TYPE
    instance_count: int = 1
    local: bool = False
    timeout: float = 1800

    @classmethod
    def of(cls, args: argparse.Namespace) -> "Fleet":
        return cls(
            instance_type=getattr(args, "instance_type", common.DEFAULT_INSTANCE_TYPE),
            instance_count=getattr(args, "instance_count", 1),
            local=bool(args.local),
            timeout=float(args.timeout),
        )


def unique(name: str) -> str:
    return f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{int(time.time() * 1000) % 1000:03d}"


def create_model(
    client, endpoint: str, image: str, model_data: str, role: str, env: dict[str, str], multi_model: bool = False
) -> str:
    model = unique(endpoint)
    container = {"Image": image, "ModelDataUrl": model_data, "Environment": env}
    if multi_model:  # the image's multi-models label lets SageMaker accept this; it sets SAGEMAKER_MULTI_MODEL=true
        container["Mode"] = "MultiModel"
    client.create_model(ModelName=model, ExecutionRoleArn=role, PrimaryContainer=container)
    print(f"model {model}: {model_data}{' (multi-model: invoke with --target-model)' if multi_model else ''}")
    return model


def multi_model_prefix(args: argparse.Namespace) -> str:
    """With --multi-model, --model-data is the S3 prefix under which SageMaker finds every model.tar.gz."""
    if args.local:
        raise UserError(
            "--multi-model needs SageMaker: local mode serves one model per endpoint; "
            "run `docker run -e SAGEMAKER_MULTI_MODEL=true IMAGE serve` to try the routes locally"
        )
    if len(args.model_data) != 1:
        raise UserError("--multi-model takes one --model-data: the S3 prefix holding the models")
    prefix = args.model_data[0]
    if not prefix.startswith("s3://") or prefix.endswith(".tar.gz"):
        raise UserError(
            f"--model-data {prefix}: with --multi-model, pass the S3 prefix holding the models "
            "(e.g. s3://bucket/models/), not one model.tar.gz"
        )
    return prefix if prefix.endswith("/") else prefix + "/"


def create_config(client, endpoint: str, variants: list[dict]) -> str:
    config = unique(endpoint)
    client.create_endpoint_config(EndpointConfigName=config, ProductionVariants=variants)
    print(
        f"endpoint config {config}: "
        + ", ".join(f"{v['VariantName']}={v['ModelName']} (weight {v['InitialVariantWeight']})" for v in variants)
    )
    return config


def variant(name: str, model: str, fleet: Fleet, weight: float = 1.0) -> dict:
    return {
        "VariantName": name,
        "ModelName": model,
        "InitialInstanceCount": fleet.instance_count,
        "InstanceType": "local" if fleet.local else fleet.instance_type,
        "InitialVariantWeight": weight,
    }


def endpoint_exists(client, endpoint: str) -> bool:
    from botocore.exceptions import ClientError

    try:
        client.describe_endpoint(EndpointName=endpoint)
        return True
    except ClientError as error:
        if error_code(error) == "ValidationException":
            return False
        raise


def wait_in_service(client, endpoint: str, fleet: Fleet) -> dict:
    return common.wait_for(
        lambda: client.describe_endpoint(EndpointName=endpoint),
        "EndpointStatus",
        {"InService"},
        {"Failed", "OutOfService"},
        fleet.timeout,
        f"endpoint {endpoint}",
        poll=1 if fleet.local else 15,
    )


def models_of(client, config: str) -> list[str]:
    return [v["ModelName"] for v in client.describe_endpoint_config(EndpointConfigName=config)["ProductionVariants"]]


def retire(client, config: str, keep: set[str]) -> None:
    """Delete an endpoint config no longer in use and its models (except ``keep``)."""
    for model in models_of(client, config):
        if model not in keep:
            ignore_missing(client.delete_model, ModelName=model)
    ignore_missing(client.delete_endpoint_config, EndpointConfigName=config)


def ignore_missing(call, **kwargs) -> None:
    from botocore.exceptions import ClientError

    try:
        call(**kwargs)
    except ClientError as error:
        if error_code(error) != "ValidationException":
            raise


def create(client, args: argparse.Namespace) -> dict:
    role, image = common.execution_role(args), common.default_image(args)  # before any call: fail fast
    multi_model = getattr(args, "multi_model", False)
    model_data = multi_model_prefix(args) if multi_model else args.model_data[0]
    if endpoint_exists(client, args.name):
        raise UserError(f"endpoint {args.name} exists: use `update` to change its model, or `delete` it")
    model = create_model(client, args.name, image, model_data, role, args.env, multi_model)
    config = create_config(client, args.name, [variant("variant-1", model, Fleet.of(args))])
    client.create_endpoint(EndpointName=args.name, EndpointConfigName=config)
    return wait_in_service(client, args.name, Fleet.of(args))


def switch(client, args: argparse.Namespace, new_config: str) -> dict:
    """Point the endpoint at ``new_config`` and retire the old config and models."""
    old_config = client.describe_endpoint(EndpointName=args.name)["EndpointConfigName"]
    if args.local:  # the local runtime has no UpdateEndpoint: stop the old container, start the new one
        client.delete_endpoint(EndpointName=args.name)
        client.create_endpoint(EndpointName=args.name, EndpointConfigName=new_config)
    else:
        request = {"EndpointName": args.name, "EndpointConfigName": new_config}
        if getattr(args, "canary", None):
            request["DeploymentConfig"] = {
                "BlueGreenUpdatePolicy": {
                    "TrafficRoutingConfiguration": {
                        "Type": "CANARY",
                        "WaitIntervalInSeconds": args.canary_wait,
                        "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": args.canary},
                    },
                    "TerminationWaitInSeconds": 0,
                }
            }
        client.update_endpoint(**request)
        time.sleep(1)  # the status turns Updating shortly after the call returns
    description = wait_in_service(client, args.name, Fleet.of(args))
    retire(client, old_config, keep=set(models_of(client, new_config)))
    return description


def update(client, args: argparse.Namespace) -> dict:
    role, image = common.execution_role(args), common.default_image(args)
    current = client.describe_endpoint(EndpointName=args.name)
    old = client.describe_endpoint_config(EndpointConfigName=current["EndpointConfigName"])["ProductionVariants"][0]
    if args.instance_type == common.DEFAULT_INSTANCE_TYPE and not args.local:  # keep the fleet unless asked
        args.instance_type = old["InstanceType"]
    model = create_model(client, args.name, image, args.model_data[0], role, args.env)
    config = create_config(client, args.name, [variant(old["VariantName"], model, Fleet.of(args))])
    return switch(client, args, config)


def ab(client, args: argparse.Namespace) -> dict:
    if args.local:
        raise UserError("A/B variants need SageMaker: a local endpoint serves only its first variant")
    weights = args.weights or [1.0] * len(args.model_data)
    if len(args.model_data) < 2 or len(weights) != len(args.model_data):
        raise UserError("ab: give two or more --model-data and as many --weights")
    role, image = common.execution_role(args), common.default_image(args)
    variants = [
        variant(f"variant-{i}", create_model(client, args.name, image, data, role, args.env), Fleet.of(args), weight)
        for i, (data, weight) in enumerate(zip(args.model_data, weights), 1)
    ]
    config = create_config(client, args.name, variants)
    if endpoint_exists(client, args.name):
        return switch(client, args, config)
    client.create_endpoint(EndpointName=args.name, EndpointConfigName=config)
    return wait_in_service(client, args.name, Fleet.of(args))


def shift(client, args: argparse.Namespace) -> dict:
    if args.local:
        raise UserError("traffic shifting needs SageMaker: a local endpoint serves only its first variant")
    desired = []
    for item in args.weight:
        name, weight = common.key_value(item, "--weight", "VARIANT=WEIGHT")
        try:
            desired.append({"VariantName": name, "DesiredWeight": float(weight)})
        except ValueError:
            raise UserError(f"--weight {item!r}: WEIGHT must be a number") from None
    if not desired:
        raise UserError("shift: give --weight VARIANT=WEIGHT for each variant to change")
    client.update_endpoint_weights_and_capacities(EndpointName=args.name, DesiredWeightsAndCapacities=desired)
    time.sleep(1)
    description = wait_in_service(client, args.name, Fleet.of(args))
    for v in description.get("ProductionVariants", []):
        print(f"{v['VariantName']}: weight {v.get('CurrentWeight')}")
    return description


def delete(client, args: argparse.Namespace) -> dict:
    from botocore.exceptions import ClientError

    try:
        config = client.describe_endpoint(EndpointName=args.name)["EndpointConfigName"]
    except ClientError as error:
        if error_code(error) != "ValidationException":
            raise
        print(f"endpoint {args.name}: not found, nothing to delete")
        return {"deleted": []}
    try:
        models = models_of(client, config)
    except ClientError:
        models = []
    client.delete_endpoint(EndpointName=args.name)
    print(f"endpoint {args.name}: deleted")
    ignore_missing(client.delete_endpoint_config, EndpointConfigName=config)
    print(f"endpoint config {config}: deleted")
    for model in models:
        ignore_missing(client.delete_model, ModelName=model)
        print(f"model {model}: deleted")
    return {"deleted": [args.name, config, *models]}


COMMANDS = {"create": create, "update": update, "ab": ab, "shift": shift, "delete": delete}


def add_command_args(p: argparse.ArgumentParser, name: str) -> None:
    p.add_argument("--name", required=True, help="endpoint name")
    p.add_argument("--timeout", type=float, default=1800, help="seconds to wait for the endpoint")
    common.add_session_args(p)
    if name in ("create", "update", "ab"):
        p.add_argument("--model-data", nargs="+", required=True, help="model.tar.gz URI(s)")
        p.add_argument("--image", help="serving image (default with --local: sagemaker-deepar:latest)")
        p.add_argument("--instance-type", default=common.DEFAULT_INSTANCE_TYPE)
        p.add_argument("--instance-count", type=int, default=1)
        p.add_argument(
            "--env",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            type=env_item,
            help="container environment, e.g. SAGEMAKER_MODEL_SERVER_WORKERS=2",
        )
    if name == "create":
        p.add_argument(
            "--multi-model",
            action="store_true",
            help="multi-model endpoint (CreateModel Mode=MultiModel); --model-data is the S3 prefix of the models",
        )
    if name == "update":
        p.add_argument("--canary", type=int, metavar="PERCENT", help="shift this share of capacity first")
        p.add_argument("--canary-wait", type=int, default=300, help="seconds the canary runs before the rest")
    if name == "ab":
        p.add_argument("--weights", type=float, nargs="+", help="one weight per --model-data (default equal)")
    if name == "shift":
        p.add_argument("--weight", action="append", default=[], metavar="VARIANT=WEIGHT")


def parser() -> argparse.ArgumentParser:
    top = common.command_parser("evaluation.deploy", __doc__)
    sub = top.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        add_command_args(sub.add_parser(name, help=COMMANDS[name].__doc__), name)
    return top


def command_parser(name: str) -> argparse.ArgumentParser:
    """One sub-command's options alone (for ``common.options``)."""
    p = argparse.ArgumentParser(prog=f"python -m evaluation.deploy {name}")
    p.set_defaults(command=name)
    add_command_args(p, name)
    return p


def env_item(item: str) -> tuple[str, str]:
    return common.key_value(item, "--env")


def hold(client, args: argparse.Namespace) -> None:
    """A local endpoint lives in this process: serve until Ctrl-C / SIGTERM, then delete it."""
    import signal

    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    print(f"local endpoint {args.name} on http://127.0.0.1:{args.serving_port}; Ctrl-C deletes it", flush=True)
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    delete(client, args)


def run(args: argparse.Namespace, hold_local: bool = False) -> dict:
    if hasattr(args, "env"):
        args = argparse.Namespace(**{**vars(args), "env": dict(args.env)})
    session = common.open_session(args)
    client = session.sagemaker_client
    if args.local and args.command != "create" and not endpoint_exists(client, args.name):
        raise UserError(
            f"no local endpoint {args.name} in this process: local endpoints live in the process "
            "that created them (`python -m evaluation.deploy create --local` holds one; evaluation.workflow chains "
            "create, update and delete)"
        )
    result = COMMANDS[args.command](client, args)
    if args.local and hold_local and args.command == "create":
        hold(client, args)
    return result


def main(argv: list[str] | None = None, hold_local: bool = False) -> dict:
    return run(parser().parse_args(argv), hold_local)


if __name__ == "__main__":
    raise SystemExit(common.run_command(lambda argv: main(argv, hold_local=True)))
