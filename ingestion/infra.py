"""Build, inspect or tear down the ingestion infrastructure: device -> IoT Core -> Firehose -> S3 -> Glue.

    python -m ingestion.infra plan [--config FILE] [--prefix P] [--devices N] ...   what `up` would do; changes nothing
    python -m ingestion.infra up   ...                                            create or fix; a re-run changes nothing
    python -m ingestion.infra down [--delete-data]                                 delete in dependency order

`up` makes: four S3 buckets (raw, curated, artifacts, and results for Athena: default encryption,
public access blocked, a policy refusing every request not made over TLS, versioning on curated);
least-privilege IAM roles for Firehose, the IoT rule and Glue; one IoT thing
and certificate per device (key saved 0600 in the state folder, reused on re-runs, never minted
twice) under a policy that lets a device connect only as its thing name and publish only to
<prefix>/<thing>/telemetry; a Firehose stream to the raw bucket (time-partitioned, GZIP); the IoT
topic rule feeding it; a Glue database, crawler (readings/ and quarantine/ become tables) and the
PySpark job (ingestion/glue_job.py uploaded to the artifacts bucket); an Athena workgroup on the DuckDB
engine writing its results to the results bucket, for `python -m ingestion.query NAME --athena`. It writes <state>/settings.json with every resource id and the devices'
connection settings, which the simulator reads. Any AWS error ends in one line and exit status 1.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from awsinfra import settings as aws_settings
from awsinfra.clients import client
from awsinfra.errors import error_code
from sagemaker_deepar.cli import run_command
from sagemaker_deepar.errors import UserError

from .config import IngestionConfig, environment, load_config

HERE = Path(__file__).resolve().parent
GLUE_SCRIPT = HERE / "glue_job.py"
RAW_PREFIX = "raw/"
CURATED_PREFIX = "readings/"
QUARANTINE_PREFIX = "quarantine/"
ATHENA_RESULTS_PREFIX = "athena/"
# raw, curated, artifacts: the pipeline's; results: what Athena's workgroup writes (query results).
BUCKET_KINDS = ("raw", "curated", "artifacts", "results")
# Athena's engine version that runs DuckDB's dialect (the SQL of queries/; ListEngineVersions' name).
ATHENA_ENGINE = "DuckDB"
FIREHOSE_PREFIX = RAW_PREFIX + "year=!{timestamp:yyyy}/month=!{timestamp:MM}/day=!{timestamp:dd}/hour=!{timestamp:HH}/"
FIREHOSE_ERROR_PREFIX = (
    "errors/!{firehose:error-output-type}/year=!{timestamp:yyyy}/month=!{timestamp:MM}/day=!{timestamp:dd}/"
)


@dataclass
class Context:
    config: IngestionConfig
    session: Any
    apply: bool
    account: str = ""
    region: str = ""
    results: list[tuple[str, str, str]] = field(default_factory=list)
    _clients: dict = field(default_factory=dict)

    def client(self, service: str):
        if service not in self._clients:
            self._clients[service] = client(service, self.session)  # awsinfra's: retries, AWS_ENDPOINT_URL
        return self._clients[service]

    def report(self, action: str, kind: str, name: str, detail: str = "") -> None:
        self.results.append((action, kind, name))
        print(f"{action:<10} {kind:<22} {name}" + (f"  ({detail})" if detail else ""), flush=True)

    def note(self, text: str) -> None:
        print(f"note: {text}", flush=True)

    def bucket(self, kind: str) -> str:
        return self.config.bucket(kind, self.account, self.region)

    def arn(self, service: str, resource: str, region: bool = True) -> str:
        return f"arn:aws:{service}:{self.region if region else ''}:{self.account}:{resource}"

    @property
    def stream(self) -> str:
        return f"{self.config.prefix}-stream"

    def role_name(self, kind: str) -> str:
        return f"{self.config.prefix}-{kind}-role"

    def role_arn(self, kind: str) -> str:
        return f"arn:aws:iam::{self.account}:role/{self.role_name(kind)}"

    @property
    def state_dir(self) -> Path:
        return self.config.resolved_state_dir()


def missing(call: Callable, *codes: str, **kwargs) -> Optional[dict]:
    """``call(**kwargs)``, or None when AWS says the resource does not exist."""
    from botocore.exceptions import ClientError

    try:
        return call(**kwargs)
    except ClientError as error:
        if error_code(error) in codes or error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
            return None
        raise


def ensure(
    ctx: Context,
    kind: str,
    name: str,
    current: Optional[Any],
    create: Callable[[], Any],
    differences: Callable[[Any], list[str]] = lambda _: [],
    fix: Callable[[list[str]], Any] = lambda _: None,
) -> None:
    """The one pattern of every resource: create when missing, fix what differs, else unchanged."""
    if current is None:
        ctx.report("create" if ctx.apply else "+ create", kind, name)
        if ctx.apply:
            create()
        return
    diff = differences(current)
    if diff:
        ctx.report("update" if ctx.apply else "~ update", kind, name, "; ".join(diff))
        if ctx.apply:
            fix(diff)
    else:
        ctx.report("unchanged", kind, name)


def retry_while_role_propagates(call: Callable[[], Any], codes: tuple[str, ...]) -> Any:
    """A role just created can take seconds before Firehose/IoT may assume it: retry with backoff."""
    from botocore.exceptions import ClientError

    deadline, delay = time.monotonic() + environment().iam_wait, 2.0
    while True:
        try:
            return call()
        except ClientError as error:
            text = str(error).lower()
            if (
                error_code(error) not in codes
                or not ("role" in text or "assume" in text)
                or time.monotonic() > deadline
            ):
                raise
            time.sleep(delay)
            delay = min(delay * 2, 15)


# --- S3 ----------------------------------------------------------------------------------------

ENCRYPTION = {"Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}, "BucketKeyEnabled": True}]}
PUBLIC_BLOCK = {
    "BlockPublicAcls": True,
    "IgnorePublicAcls": True,
    "BlockPublicPolicy": True,
    "RestrictPublicBuckets": True,
}


def tls_only_policy(name: str) -> dict:
    """Refuse every request to the bucket that does not come over TLS (aws:SecureTransport)."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "TlsOnly",
                "Effect": "Deny",
                "Principal": "*",
                "Action": "s3:*",
                "Resource": [f"arn:aws:s3:::{name}", f"arn:aws:s3:::{name}/*"],
                "Condition": {"Bool": {"aws:SecureTransport": "false"}},
            }
        ],
    }


def over_tls(ctx: Context) -> bool:
    """Whether S3 is reached over TLS. AWS always is; a plain-HTTP endpoint (a local moto server) is not,
    and there a TLS-only policy would lock us out of our own buckets (moto also applies a conditional
    Deny unconditionally), so the policy is only put, and checked, where requests carry TLS."""
    return str(ctx.client("s3").meta.endpoint_url).startswith("https://")


def bucket_settings(ctx: Context, name: str, versioned: bool) -> list[str]:
    s3 = ctx.client("s3")
    diff = []
    encryption = missing(s3.get_bucket_encryption, "ServerSideEncryptionConfigurationNotFoundError", Bucket=name)
    rules = (encryption or {}).get("ServerSideEncryptionConfiguration", {}).get("Rules", [])
    if not rules or rules[0].get("ApplyServerSideEncryptionByDefault", {}).get("SSEAlgorithm") not in (
        "AES256",
        "aws:kms",
    ):
        diff.append("default encryption")
    block = missing(s3.get_public_access_block, "NoSuchPublicAccessBlockConfiguration", Bucket=name)
    if (block or {}).get("PublicAccessBlockConfiguration") != PUBLIC_BLOCK:
        diff.append("public access block")
    if versioned and s3.get_bucket_versioning(Bucket=name).get("Status") != "Enabled":
        diff.append("versioning")
    if over_tls(ctx):
        policy = missing(s3.get_bucket_policy, "NoSuchBucketPolicy", Bucket=name)
        if policy is None or normalize(json.loads(policy["Policy"])) != normalize(tls_only_policy(name)):
            diff.append("TLS-only bucket policy")
    return diff


def apply_bucket_settings(ctx: Context, name: str, versioned: bool) -> None:
    s3 = ctx.client("s3")
    s3.put_bucket_encryption(Bucket=name, ServerSideEncryptionConfiguration=ENCRYPTION)
    s3.put_public_access_block(Bucket=name, PublicAccessBlockConfiguration=PUBLIC_BLOCK)
    if versioned:
        s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    if over_tls(ctx):
        s3.put_bucket_policy(Bucket=name, Policy=json.dumps(tls_only_policy(name)))


def head_bucket(ctx: Context, name: str) -> Optional[dict]:
    from botocore.exceptions import ClientError

    try:
        return ctx.client("s3").head_bucket(Bucket=name)
    except ClientError as error:
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if status == 404:
            return None
        if status == 403:
            raise UserError(f"bucket {name} belongs to another account: choose another name in the config") from None
        raise


def ensure_buckets(ctx: Context) -> None:
    s3 = ctx.client("s3")
    if not over_tls(ctx):
        ctx.note(f"TLS-only bucket policies not put: {s3.meta.endpoint_url} is not a TLS endpoint")
    for kind in BUCKET_KINDS:
        name, versioned = ctx.bucket(kind), kind == "curated"

        def create(name=name, versioned=versioned):
            location = (
                {} if ctx.region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": ctx.region}}
            )
            s3.create_bucket(Bucket=name, **location)
            apply_bucket_settings(ctx, name, versioned)

        ensure(
            ctx,
            f"s3 bucket ({kind})",
            name,
            head_bucket(ctx, name),
            create,
            lambda _, name=name, versioned=versioned: bucket_settings(ctx, name, versioned),
            lambda _, name=name, versioned=versioned: apply_bucket_settings(ctx, name, versioned),
        )


# --- IAM ---------------------------------------------------------------------------------------


def trust(service: str, account: str) -> dict:
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": service},
                "Action": "sts:AssumeRole",
                "Condition": {"StringEquals": {"aws:SourceAccount": account}},
            }
        ],
    }


def role_policies(ctx: Context) -> dict[str, tuple[str, dict]]:
    """Each role's trusted service and its one inline policy: only what that service needs."""
    raw, curated, artifacts = (f"arn:aws:s3:::{ctx.bucket(k)}" for k in ("raw", "curated", "artifacts"))
    database = ctx.config.underscored
    return {
        "firehose": (
            "firehose.amazonaws.com",
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Action": ["s3:PutObject", "s3:AbortMultipartUpload"],
                        "Resource": [f"{raw}/{RAW_PREFIX}*", f"{raw}/errors/*"],
                    },
                    {
                        "Effect": "Allow",
                        "Action": ["s3:GetBucketLocation", "s3:ListBucket", "s3:ListBucketMultipartUploads"],
                        "Resource": raw,
                    },
                ],
            },
        ),
        "iot-rule": (
            "iot.amazonaws.com",
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Action": ["firehose:PutRecord", "firehose:PutRecordBatch"],
                        "Resource": ctx.arn("firehose", f"deliverystream/{ctx.stream}"),
                    }
                ],
            },
        ),
        "glue": (
            "glue.amazonaws.com",
            {
                "Version": "2012-10-17",
                "Statement": [
                    {"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": f"{raw}/{RAW_PREFIX}*"},
                    {"Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": [raw, curated, artifacts]},
                    {
                        "Effect": "Allow",
                        "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
                        "Resource": [
                            f"{curated}/{CURATED_PREFIX}*",
                            f"{curated}/{QUARANTINE_PREFIX}*",
                            f"{artifacts}/temp/*",
                        ],
                    },
                    {"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": f"{artifacts}/scripts/*"},
                    {
                        "Effect": "Allow",
                        "Action": [
                            "glue:GetDatabase",
                            "glue:GetTable",
                            "glue:GetTables",
                            "glue:CreateTable",
                            "glue:UpdateTable",
                            "glue:GetPartition",
                            "glue:GetPartitions",
                            "glue:BatchCreatePartition",
                            "glue:BatchGetPartition",
                            "glue:UpdatePartition",
                        ],
                        "Resource": [
                            ctx.arn("glue", "catalog"),
                            ctx.arn("glue", f"database/{database}"),
                            ctx.arn("glue", f"table/{database}/*"),
                        ],
                    },
                    {
                        "Effect": "Allow",
                        "Action": ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"],
                        "Resource": ctx.arn("logs", "log-group:/aws-glue/*"),
                    },
                ],
            },
        ),
    }


def ensure_roles(ctx: Context) -> None:
    iam = ctx.client("iam")
    for kind, (service, policy) in role_policies(ctx).items():
        name = ctx.role_name(kind)
        document = trust(service, ctx.account)
        current = missing(iam.get_role, "NoSuchEntity", RoleName=name)

        def differences(role, name=name, document=document, policy=policy):
            diff = []
            if normalize(role["Role"]["AssumeRolePolicyDocument"]) != normalize(document):
                diff.append("trust policy")
            inline = missing(iam.get_role_policy, "NoSuchEntity", RoleName=name, PolicyName="least-privilege")
            if inline is None or normalize(inline["PolicyDocument"]) != normalize(policy):
                diff.append("inline policy")
            return diff

        def fix(diff, name=name, document=document, policy=policy):
            if "trust policy" in diff:
                iam.update_assume_role_policy(RoleName=name, PolicyDocument=json.dumps(document))
            iam.put_role_policy(RoleName=name, PolicyName="least-privilege", PolicyDocument=json.dumps(policy))

        def create(name=name, document=document, policy=policy, kind=kind):
            iam.create_role(
                RoleName=name,
                AssumeRolePolicyDocument=json.dumps(document),
                Description=f"{ctx.config.prefix}: {kind}",
                Tags=[{"Key": "project", "Value": ctx.config.prefix}],
            )
            iam.put_role_policy(RoleName=name, PolicyName="least-privilege", PolicyDocument=json.dumps(policy))

        ensure(ctx, f"iam role ({kind})", name, current, create, differences, fix)


def normalize(document: Any) -> Any:
    """IAM returns documents URL-decoded dicts or strings: compare them as sorted JSON."""
    if isinstance(document, str):
        from urllib.parse import unquote

        document = json.loads(unquote(document))
    return json.dumps(document, sort_keys=True)


# --- IoT ---------------------------------------------------------------------------------------


def device_policy(ctx: Context) -> dict:
    """A device connects only with client id = its thing name (and only with an attached certificate),
    and publishes only to its own topic."""
    thing = "${iot:Connection.Thing.ThingName}"
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": "iot:Connect",
                "Resource": ctx.arn("iot", f"client/{thing}"),
                "Condition": {"Bool": {"iot:Connection.Thing.IsAttached": "true"}},
            },
            {
                "Effect": "Allow",
                "Action": "iot:Publish",
                "Resource": ctx.arn("iot", f"topic/{ctx.config.prefix}/{thing}/telemetry"),
            },
        ],
    }


def policy_name(ctx: Context) -> str:
    return f"{ctx.config.prefix}-device-policy"


def ensure_iot_policy(ctx: Context) -> None:
    iot = ctx.client("iot")
    document = device_policy(ctx)
    current = missing(iot.get_policy, "ResourceNotFoundException", policyName=policy_name(ctx))

    def fix(_):
        versions = iot.list_policy_versions(policyName=policy_name(ctx))["policyVersions"]
        if len(versions) >= 5:  # IoT keeps at most five versions: drop the oldest non-default one
            oldest = min((v for v in versions if not v["isDefaultVersion"]), key=lambda v: int(v["versionId"]))
            iot.delete_policy_version(policyName=policy_name(ctx), policyVersionId=oldest["versionId"])
        iot.create_policy_version(policyName=policy_name(ctx), policyDocument=json.dumps(document), setAsDefault=True)

    ensure(
        ctx,
        "iot policy",
        policy_name(ctx),
        current,
        lambda: iot.create_policy(policyName=policy_name(ctx), policyDocument=json.dumps(document)),
        lambda p: [] if normalize(p["policyDocument"]) == normalize(document) else ["policy document"],
        fix,
    )


def cert_paths(ctx: Context, thing: str) -> dict[str, Path]:
    folder = ctx.state_dir / "certs"
    return {
        "cert": folder / f"{thing}.cert.pem",
        "key": folder / f"{thing}.private.key",
        "id": folder / f"{thing}.certificate.json",
    }


def write_private(path: Path, text: str) -> None:
    """Created 0600 from the start: the key is never readable by others, not even briefly."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def stored_certificate(ctx: Context, thing: str) -> Optional[dict]:
    paths = cert_paths(ctx, thing)
    if not all(p.exists() for p in paths.values()):
        return None
    stored = json.loads(paths["id"].read_text())
    found = missing(
        ctx.client("iot").describe_certificate, "ResourceNotFoundException", certificateId=stored["certificateId"]
    )
    if found is None:
        raise UserError(
            f"{paths['id']}: certificate {stored['certificateId']} no longer exists in IoT: "
            f"remove {paths['id'].parent} for {thing} to mint a new one"
        )
    return stored


def ensure_things(ctx: Context) -> None:
    iot = ctx.client("iot")
    for thing in ctx.config.thing_names:
        existing = missing(iot.describe_thing, "ResourceNotFoundException", thingName=thing)
        ensure(
            ctx,
            "iot thing",
            thing,
            existing,
            lambda thing=thing: iot.create_thing(
                thingName=thing, attributePayload={"attributes": {"project": ctx.config.prefix}}
            ),
        )
        stored = stored_certificate(ctx, thing)
        if stored is None and existing:
            principals = iot.list_thing_principals(thingName=thing)["principals"]
            if principals:  # never mint a second certificate for a device
                raise UserError(
                    f"thing {thing} already has certificate {principals[0].rsplit('/', 1)[-1]} but its "
                    f"private key is not in {cert_paths(ctx, thing)['key'].parent}: restore the state "
                    "folder, or run `down` first"
                )

        def create_certificate(thing=thing):
            created = iot.create_keys_and_certificate(setAsActive=True)
            paths = cert_paths(ctx, thing)
            write_private(paths["key"], created["keyPair"]["PrivateKey"])
            paths["cert"].write_text(created["certificatePem"])
            paths["id"].write_text(
                json.dumps({"certificateId": created["certificateId"], "certificateArn": created["certificateArn"]})
            )

        ensure(ctx, "iot certificate", f"{thing} ({cert_paths(ctx, thing)['key']})", stored, create_certificate)
        if ctx.apply:
            arn = json.loads(cert_paths(ctx, thing)["id"].read_text())["certificateArn"]
            iot.attach_policy(policyName=policy_name(ctx), target=arn)  # both attachments are idempotent
            iot.attach_thing_principal(thingName=thing, principal=arn)


# --- Firehose and the IoT rule -------------------------------------------------------------------


def firehose_destination(ctx: Context) -> dict:
    return {
        "RoleARN": ctx.role_arn("firehose"),
        "BucketARN": f"arn:aws:s3:::{ctx.bucket('raw')}",
        "Prefix": FIREHOSE_PREFIX,
        "ErrorOutputPrefix": FIREHOSE_ERROR_PREFIX,
        "BufferingHints": {"IntervalInSeconds": ctx.config.buffer_seconds, "SizeInMBs": ctx.config.buffer_mb},
        "CompressionFormat": "GZIP",
    }


def ensure_stream(ctx: Context) -> None:
    firehose = ctx.client("firehose")
    current = missing(firehose.describe_delivery_stream, "ResourceNotFoundException", DeliveryStreamName=ctx.stream)

    def create():
        retry_while_role_propagates(
            lambda: firehose.create_delivery_stream(
                DeliveryStreamName=ctx.stream,
                DeliveryStreamType="DirectPut",
                ExtendedS3DestinationConfiguration=firehose_destination(ctx),
            ),
            ("InvalidArgumentException",),
        )

    ensure(ctx, "firehose stream", ctx.stream, current, create)


def rule_name(ctx: Context) -> str:
    return f"{ctx.config.underscored}_to_firehose"


def rule_payload(ctx: Context) -> dict:
    return {
        "sql": f"SELECT *, topic(2) AS device_id, timestamp() AS received_at FROM '{ctx.config.topic_filter}'",
        "awsIotSqlVersion": "2016-03-23",
        "ruleDisabled": False,
        "description": "device telemetry -> Firehose -> raw bucket",
        "actions": [
            {
                "firehose": {
                    "roleArn": ctx.role_arn("iot-rule"),
                    "deliveryStreamName": ctx.stream,
                    "separator": "\n",
                    "batchMode": False,
                }
            }
        ],
    }


def ensure_rule(ctx: Context) -> None:
    iot = ctx.client("iot")
    payload = rule_payload(ctx)
    current = missing(iot.get_topic_rule, "ResourceNotFoundException", "UnauthorizedException", ruleName=rule_name(ctx))

    def differences(rule):
        got = rule["rule"]
        return [] if (got["sql"], got["actions"]) == (payload["sql"], payload["actions"]) else ["sql or action"]

    ensure(
        ctx,
        "iot topic rule",
        rule_name(ctx),
        current,
        lambda: retry_while_role_propagates(
            lambda: iot.create_topic_rule(ruleName=rule_name(ctx), topicRulePayload=payload),
            ("InvalidRequestException",),
        ),
        differences,
        lambda _: iot.replace_topic_rule(ruleName=rule_name(ctx), topicRulePayload=payload),
    )


# --- Glue --------------------------------------------------------------------------------------


def script_key() -> str:
    return "scripts/glue_job.py"


def job_definition(ctx: Context) -> dict:
    raw, curated, artifacts = (ctx.bucket(k) for k in ("raw", "curated", "artifacts"))
    return {
        "Role": ctx.role_arn("glue"),
        "GlueVersion": "5.0",
        "WorkerType": "G.1X",
        "NumberOfWorkers": ctx.config.glue_workers,
        "Timeout": 60,
        "Command": {"Name": "glueetl", "ScriptLocation": f"s3://{artifacts}/{script_key()}", "PythonVersion": "3"},
        "DefaultArguments": {
            "--raw-path": f"s3://{raw}/{RAW_PREFIX}",
            "--curated-path": f"s3://{curated}/{CURATED_PREFIX}",
            "--quarantine-path": f"s3://{curated}/{QUARANTINE_PREFIX}",
            "--earliest-timestamp": ctx.config.earliest_timestamp,
            "--max-ahead-hours": f"{ctx.config.max_ahead_hours:g}",
            "--TempDir": f"s3://{artifacts}/temp/",
            "--job-language": "python",
            "--enable-metrics": "true",
        },
    }


def ensure_glue(ctx: Context) -> None:
    glue, s3 = ctx.client("glue"), ctx.client("s3")
    database = ctx.config.underscored
    ensure(
        ctx,
        "glue database",
        database,
        missing(glue.get_database, "EntityNotFoundException", Name=database),
        lambda: glue.create_database(DatabaseInput={"Name": database, "Description": f"{ctx.config.prefix} readings"}),
    )
    body = GLUE_SCRIPT.read_bytes()
    # A missing bucket (plan before the first up) answers 404 too: the script then counts as missing.
    head = missing(s3.head_object, "404", "NoSuchKey", "NoSuchBucket", Bucket=ctx.bucket("artifacts"), Key=script_key())
    upload = lambda: s3.put_object(  # noqa: E731
        Bucket=ctx.bucket("artifacts"),
        Key=script_key(),
        Body=body,
        ServerSideEncryption="AES256",
    )
    ensure(
        ctx,
        "glue job script",
        f"s3://{ctx.bucket('artifacts')}/{script_key()}",
        head,
        upload,
        lambda h: [] if h["ETag"].strip('"') == hashlib.md5(body).hexdigest() else ["script content"],
        lambda _: upload(),
    )
    crawler = f"{ctx.config.prefix}-curated-crawler"
    ensure(
        ctx,
        "glue crawler",
        crawler,
        missing(glue.get_crawler, "EntityNotFoundException", Name=crawler),
        lambda: glue.create_crawler(
            Name=crawler,
            Role=ctx.role_arn("glue"),
            DatabaseName=database,
            # readings/ and quarantine/ become the catalog's `readings` and `quarantine` tables (queries/).
            Targets={
                "S3Targets": [
                    {"Path": f"s3://{ctx.bucket('curated')}/{CURATED_PREFIX}"},
                    {"Path": f"s3://{ctx.bucket('curated')}/{QUARANTINE_PREFIX}"},
                ]
            },
            SchemaChangePolicy={"UpdateBehavior": "UPDATE_IN_DATABASE", "DeleteBehavior": "LOG"},
        ),
    )
    job, definition = f"{ctx.config.prefix}-raw-to-curated", job_definition(ctx)

    def differences(current):
        got = current["Job"]
        wanted = {
            "script": definition["Command"]["ScriptLocation"],
            "role": definition["Role"],
            "version": definition["GlueVersion"],
            "workers": definition["NumberOfWorkers"],
            "arguments": definition["DefaultArguments"],
        }
        found = {
            "script": got.get("Command", {}).get("ScriptLocation"),
            "role": got.get("Role"),
            "version": got.get("GlueVersion"),
            "workers": got.get("NumberOfWorkers"),
            "arguments": {k: got.get("DefaultArguments", {}).get(k) for k in definition["DefaultArguments"]},
        }
        return [key for key in wanted if wanted[key] != found[key]]

    ensure(
        ctx,
        "glue job",
        job,
        missing(glue.get_job, "EntityNotFoundException", JobName=job),
        lambda: glue.create_job(Name=job, **definition),
        differences,
        lambda _: glue.update_job(JobName=job, JobUpdate=definition),
    )


# --- Athena ---------------------------------------------------------------------------------------


def workgroup_name(ctx: Context) -> str:
    return f"{ctx.config.prefix}-duckdb"


def athena_output(ctx: Context) -> str:
    return f"s3://{ctx.bucket('results')}/{ATHENA_RESULTS_PREFIX}"


def workgroup_configuration(ctx: Context) -> dict:
    """Results in our own bucket (SSE-S3), enforced for every query of the workgroup; DuckDB's engine."""
    return {
        "ResultConfiguration": {
            "OutputLocation": athena_output(ctx),
            "EncryptionConfiguration": {"EncryptionOption": "SSE_S3"},
        },
        "EnforceWorkGroupConfiguration": True,
        "PublishCloudWatchMetricsEnabled": True,
        "EngineVersion": {"SelectedEngineVersion": ATHENA_ENGINE},
    }


def ensure_athena(ctx: Context) -> None:
    """The workgroup `python -m ingestion.query NAME --athena --workgroup W` runs queries/ in."""
    athena, name, wanted = ctx.client("athena"), workgroup_name(ctx), workgroup_configuration(ctx)
    found = missing(athena.get_work_group, "InvalidRequestException", WorkGroup=name)
    current = (found or {}).get("WorkGroup")  # moto answers a missing workgroup with an empty body

    def differences(group: dict) -> list[str]:
        got = group.get("Configuration", {})
        return [
            key
            for key in ("ResultConfiguration", "EnforceWorkGroupConfiguration", "PublishCloudWatchMetricsEnabled")
            if got.get(key) != wanted[key]
        ] + (["EngineVersion"] if got.get("EngineVersion", {}).get("SelectedEngineVersion") != ATHENA_ENGINE else [])

    ensure(
        ctx,
        "athena workgroup",
        name,
        current,
        lambda: athena.create_work_group(
            Name=name, Configuration=wanted, Description=f"{ctx.config.prefix}: SQL over the lake (queries/)"
        ),
        differences,
        lambda _: athena.update_work_group(
            WorkGroup=name,
            ConfigurationUpdates={
                "ResultConfigurationUpdates": {
                    "OutputLocation": wanted["ResultConfiguration"]["OutputLocation"],
                    "EncryptionConfiguration": wanted["ResultConfiguration"]["EncryptionConfiguration"],
                },
                "EnforceWorkGroupConfiguration": True,
                "PublishCloudWatchMetricsEnabled": True,
                "EngineVersion": wanted["EngineVersion"],
            },
        ),
    )


# --- settings for the simulator ------------------------------------------------------------------


def write_settings(ctx: Context) -> Path:
    endpoint = ctx.client("iot").describe_endpoint(endpointType="iot:Data-ATS")["endpointAddress"]
    devices = []
    for thing in ctx.config.thing_names:
        paths = cert_paths(ctx, thing)
        stored = json.loads(paths["id"].read_text())
        devices.append(
            {
                "thing": thing,
                "client_id": thing,
                "topic": ctx.config.topic(thing),
                "cert": str(paths["cert"].resolve()),
                "key": str(paths["key"].resolve()),
                "certificate_id": stored["certificateId"],
            }
        )
    settings = {
        "prefix": ctx.config.prefix,
        "region": ctx.region,
        "account": ctx.account,
        "endpoint": endpoint,
        "port": 8883,
        "ca": None,  # None: the system trust store (has Amazon Root CA 1)
        "devices": devices,
        "resources": {
            "buckets": {k: ctx.bucket(k) for k in BUCKET_KINDS},
            "roles": {k: ctx.role_arn(k) for k in ("firehose", "iot-rule", "glue")},
            "iot_policy": policy_name(ctx),
            "topic_rule": rule_name(ctx),
            "firehose_stream": ctx.stream,
            "glue_database": ctx.config.underscored,
            "glue_crawler": f"{ctx.config.prefix}-curated-crawler",
            "glue_job": f"{ctx.config.prefix}-raw-to-curated",
            "raw_prefix": f"s3://{ctx.bucket('raw')}/{RAW_PREFIX}",
            "curated_prefix": f"s3://{ctx.bucket('curated')}/{CURATED_PREFIX}",
            "athena_workgroup": workgroup_name(ctx),
            "athena_output": athena_output(ctx),
        },
        "time_freq": ctx.config.time_freq,
        "prediction_length": ctx.config.prediction_length,
    }
    path = ctx.state_dir / "settings.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings, indent=2))
    return path


# --- down --------------------------------------------------------------------------------------


def gone(ctx: Context, kind: str, name: str, call: Callable, *codes: str, **kwargs) -> None:
    result = missing(call, *codes, **kwargs)
    ctx.report("deleted" if result is not None else "absent", kind, name)


def down(ctx: Context, delete_data: bool) -> None:
    iot, firehose, glue, iam, s3 = (ctx.client(s) for s in ("iot", "firehose", "glue", "iam", "s3"))
    gone(
        ctx,
        "iot topic rule",
        rule_name(ctx),
        iot.delete_topic_rule,
        "ResourceNotFoundException",
        "UnauthorizedException",
        ruleName=rule_name(ctx),
    )
    gone(
        ctx,
        "firehose stream",
        ctx.stream,
        firehose.delete_delivery_stream,
        "ResourceNotFoundException",
        DeliveryStreamName=ctx.stream,
        AllowForceDelete=True,
    )
    for thing in ctx.config.thing_names:
        listed = missing(iot.list_thing_principals, "ResourceNotFoundException", thingName=thing)
        for principal in (listed or {}).get("principals", []):
            certificate_id = principal.rsplit("/", 1)[-1]
            for policy in iot.list_attached_policies(target=principal)["policies"]:
                iot.detach_policy(policyName=policy["policyName"], target=principal)
            iot.detach_thing_principal(thingName=thing, principal=principal)
            iot.update_certificate(certificateId=certificate_id, newStatus="INACTIVE")
            iot.delete_certificate(certificateId=certificate_id, forceDelete=True)
            ctx.report("deleted", "iot certificate", f"{thing} ({certificate_id})")
        gone(ctx, "iot thing", thing, iot.delete_thing, "ResourceNotFoundException", thingName=thing)
        for path in cert_paths(ctx, thing).values():
            path.unlink(missing_ok=True)
    versions = missing(iot.list_policy_versions, "ResourceNotFoundException", policyName=policy_name(ctx))
    for version in (versions or {}).get("policyVersions", []):
        if not version["isDefaultVersion"]:
            iot.delete_policy_version(policyName=policy_name(ctx), policyVersionId=version["versionId"])
    gone(
        ctx, "iot policy", policy_name(ctx), iot.delete_policy, "ResourceNotFoundException", policyName=policy_name(ctx)
    )
    job, crawler = f"{ctx.config.prefix}-raw-to-curated", f"{ctx.config.prefix}-curated-crawler"
    if missing(glue.get_job, "EntityNotFoundException", JobName=job):
        glue.delete_job(JobName=job)
        ctx.report("deleted", "glue job", job)
    else:
        ctx.report("absent", "glue job", job)
    gone(ctx, "glue crawler", crawler, glue.delete_crawler, "EntityNotFoundException", Name=crawler)
    gone(
        ctx,
        "glue database",
        ctx.config.underscored,
        glue.delete_database,
        "EntityNotFoundException",
        Name=ctx.config.underscored,
    )
    for kind in ("firehose", "iot-rule", "glue"):
        name = ctx.role_name(kind)
        policies = missing(iam.list_role_policies, "NoSuchEntity", RoleName=name)
        for policy in (policies or {}).get("PolicyNames", []):
            iam.delete_role_policy(RoleName=name, PolicyName=policy)
        gone(ctx, f"iam role ({kind})", name, iam.delete_role, "NoSuchEntity", RoleName=name)
    if head_bucket(ctx, ctx.bucket("artifacts")):  # our own script is not data: always remove it
        s3.delete_object(Bucket=ctx.bucket("artifacts"), Key=script_key())
    gone(
        ctx,
        "athena workgroup",
        workgroup_name(ctx),
        ctx.client("athena").delete_work_group,
        "InvalidRequestException",
        WorkGroup=workgroup_name(ctx),
        RecursiveDeleteOption=True,
    )
    for kind in BUCKET_KINDS:
        delete_bucket(ctx, kind, delete_data)
    (ctx.state_dir / "settings.json").unlink(missing_ok=True)


def delete_bucket(ctx: Context, kind: str, delete_data: bool) -> None:
    s3, name = ctx.client("s3"), ctx.bucket(kind)
    if head_bucket(ctx, name) is None:
        ctx.report("absent", f"s3 bucket ({kind})", name)
        return
    pages = s3.get_paginator("list_object_versions").paginate(Bucket=name)
    objects = [
        {"Key": v["Key"], "VersionId": v["VersionId"]}
        for page in pages
        for v in page.get("Versions", []) + page.get("DeleteMarkers", [])
    ]
    if objects and not delete_data:
        ctx.report("kept", f"s3 bucket ({kind})", name, f"{len(objects)} objects; pass --delete-data to delete them")
        return
    for start in range(0, len(objects), 1000):
        s3.delete_objects(Bucket=name, Delete={"Objects": objects[start : start + 1000], "Quiet": True})
    s3.delete_bucket(Bucket=name)
    ctx.report("deleted", f"s3 bucket ({kind})", name)


# --- command line ------------------------------------------------------------------------------

STEPS = (
    ensure_buckets,
    ensure_roles,
    ensure_iot_policy,
    ensure_things,
    ensure_stream,
    ensure_rule,
    ensure_glue,
    ensure_athena,
)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m ingestion.infra", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("action", choices=["plan", "up", "down"])
    p.add_argument("--config", type=Path, help="JSON file with any of: " + ", ".join(IngestionConfig.model_fields))
    p.add_argument("--prefix")
    p.add_argument("--region", default=aws_settings.current().region)
    p.add_argument("--devices", type=int)
    p.add_argument("--buffer-seconds", type=int)
    p.add_argument("--buffer-mb", type=int)
    p.add_argument("--state-dir", type=Path, help="certificates and settings.json (default ingestion-state/<prefix>)")
    p.add_argument("--delete-data", action="store_true", help="down: also delete the buckets' objects")
    return p


def main(argv: Optional[list[str]] = None, session: Any = None) -> int:
    """The command: one line on stderr and exit status 1 for any failure (``INGESTION_DEBUG=1``: the traceback)."""
    return run_command(lambda argv: run(parser().parse_args(argv), session), argv, debug_env="INGESTION_DEBUG")


def run(args: argparse.Namespace, session: Any = None) -> int:
    config = load_config(
        args.config,
        {
            "prefix": args.prefix,
            "region": args.region,
            "devices": args.devices,
            "buffer_seconds": args.buffer_seconds,
            "buffer_mb": args.buffer_mb,
            "state_dir": args.state_dir,
        },
    )
    import boto3

    session = session or boto3.Session(region_name=config.region)
    ctx = Context(config, session, apply=args.action == "up")
    ctx.region = session.region_name
    if not ctx.region:
        raise UserError("no AWS region: pass --region, set AWS_REGION or put region in the config")
    ctx.account = ctx.client("sts").get_caller_identity()["Account"]
    print(f"{args.action}: prefix {config.prefix}, account {ctx.account}, region {ctx.region}", flush=True)
    if args.action == "down":
        down(ctx, args.delete_data)
        return 0
    for step in STEPS:
        step(ctx)
    changes = [r for r in ctx.results if r[0] != "unchanged"]
    if args.action == "plan":
        print(
            f"plan: {len(changes)} to create or update, {len(ctx.results) - len(changes)} unchanged; "
            "nothing was changed"
        )
        return 0
    settings = write_settings(ctx)
    print(
        f"up: {len(changes)} created or updated, {len(ctx.results) - len(changes)} unchanged; "
        f"settings for the simulator: {settings}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
