"""`python -m ingestion.infra plan|up|down` against moto server on loopback (S3, IAM, STS, IoT,
Firehose, Glue): what it creates, that a re-run changes nothing, that drift is repaired, that
down leaves nothing, and that an AWS error is one line with a non-zero exit."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import MOTO_REGION, REPO

PREFIX = "lake-test"
ACCOUNT = "123456789012"
REGION = MOTO_REGION


@pytest.fixture
def aws(moto_env, monkeypatch):
    for key in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.setenv(key, moto_env[key])
    import boto3

    return lambda service: boto3.client(service, region_name=REGION)


def infra(env: dict, state: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "ingestion.infra",
            *args,
            "--prefix",
            PREFIX,
            "--devices",
            "2",
            "--state-dir",
            str(state),
        ],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def actions(output: str) -> dict[str, str]:
    """{'<kind> <name>': action} from the command's report lines."""
    found = {}
    for line in output.splitlines():
        parts = line.split(None, 1)
        if parts and parts[0] in ("create", "update", "unchanged", "+", "~", "deleted", "absent", "kept"):
            found[line] = parts[0]
    return found


def resources(aws) -> dict:
    """Everything with our prefix that exists in the (moto) account."""
    return {
        "buckets": [b["Name"] for b in aws("s3").list_buckets()["Buckets"] if b["Name"].startswith(PREFIX)],
        "roles": [r["RoleName"] for r in aws("iam").list_roles()["Roles"] if r["RoleName"].startswith(PREFIX)],
        "things": [t["thingName"] for t in aws("iot").list_things()["things"]],
        "certificates": [c["certificateId"] for c in aws("iot").list_certificates()["certificates"]],
        "policies": [p["policyName"] for p in aws("iot").list_policies()["policies"]],
        "rules": [r["ruleName"] for r in aws("iot").list_topic_rules()["rules"]],
        "streams": aws("firehose").list_delivery_streams()["DeliveryStreamNames"],
        "glue_jobs": aws("glue").list_jobs()["JobNames"],
        "glue_crawlers": aws("glue").list_crawlers()["CrawlerNames"],
        "glue_databases": [d["Name"] for d in aws("glue").get_databases()["DatabaseList"]],
        "workgroups": [w["Name"] for w in aws("athena").list_work_groups()["WorkGroups"] if w["Name"] != "primary"],
    }


def test_plan_up_rerun_drift_down(aws, moto_env, tmp_path):
    state = tmp_path / "state"
    empty = resources(aws)

    plan = infra(moto_env, state, "plan")
    assert plan.returncode == 0, plan.stderr
    assert "plan: 19 to create or update, 0 unchanged; nothing was changed" in plan.stdout
    assert resources(aws) == empty and not state.exists()  # plan touched nothing

    up = infra(moto_env, state, "up")
    assert up.returncode == 0, up.stderr
    assert "up: 19 created or updated, 0 unchanged" in up.stdout
    check_created(aws, state)
    certificates = resources(aws)["certificates"]
    assert len(certificates) == 2

    again = infra(moto_env, state, "up")
    assert again.returncode == 0, again.stderr
    assert "up: 0 created or updated, 19 unchanged" in again.stdout
    assert set(actions(again.stdout).values()) == {"unchanged"}
    assert resources(aws)["certificates"] == certificates  # reused, never a second one

    # Drift: someone opened a bucket and edited the device policy; up repairs exactly that.
    raw = f"{PREFIX}-raw-{ACCOUNT}-{REGION}"
    aws("s3").delete_public_access_block(Bucket=raw)
    aws("iot").create_policy_version(
        policyName=f"{PREFIX}-device-policy",
        setAsDefault=True,
        policyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iot:*", "Resource": "*"}]}
        ),
    )
    assert "~ update   s3 bucket (raw)" in infra(moto_env, state, "plan").stdout
    fixed = infra(moto_env, state, "up")
    assert "update     s3 bucket (raw)" in fixed.stdout and "(public access block)" in fixed.stdout
    assert "update     iot policy" in fixed.stdout
    check_created(aws, state)

    aws("s3").put_object(Bucket=raw, Key="raw/year=2024/x.json", Body=b"{}\n")
    kept = infra(moto_env, state, "down")
    assert kept.returncode == 0 and "kept       s3 bucket (raw)" in kept.stdout  # data is not deleted by default
    down = infra(moto_env, state, "down", "--delete-data")
    assert down.returncode == 0, down.stderr
    assert resources(aws) == empty
    assert not list((state / "certs").glob("*")) and not (state / "settings.json").exists()
    assert infra(moto_env, state, "down").returncode == 0  # already gone: tolerated


def check_created(aws, state: Path) -> None:
    s3, iot, firehose, glue, iam = (aws(s) for s in ("s3", "iot", "firehose", "glue", "iam"))
    buckets = {k: f"{PREFIX}-{k}-{ACCOUNT}-{REGION}" for k in ("raw", "curated", "artifacts", "results")}
    for kind, bucket in buckets.items():
        rule = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"][0]
        assert rule["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
        assert all(s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"].values())
        assert (s3.get_bucket_versioning(Bucket=bucket).get("Status") == "Enabled") == (kind == "curated")

    document = json.loads(iot.get_policy(policyName=f"{PREFIX}-device-policy")["policyDocument"])
    connect, publish = document["Statement"]
    assert connect["Action"] == "iot:Connect"
    assert connect["Resource"] == f"arn:aws:iot:{REGION}:{ACCOUNT}:client/${{iot:Connection.Thing.ThingName}}"
    assert connect["Condition"] == {"Bool": {"iot:Connection.Thing.IsAttached": "true"}}
    assert publish["Action"] == "iot:Publish"
    assert (
        publish["Resource"]
        == f"arn:aws:iot:{REGION}:{ACCOUNT}:topic/{PREFIX}/${{iot:Connection.Thing.ThingName}}/telemetry"
    )

    rule = iot.get_topic_rule(ruleName="lake_test_to_firehose")["rule"]
    assert rule["sql"] == f"SELECT *, topic(2) AS device_id, timestamp() AS received_at FROM '{PREFIX}/+/telemetry'"
    [action] = rule["actions"]
    assert action["firehose"]["separator"] == "\n" and action["firehose"]["deliveryStreamName"] == f"{PREFIX}-stream"
    assert action["firehose"]["roleArn"] == f"arn:aws:iam::{ACCOUNT}:role/{PREFIX}-iot-rule-role"

    destination = firehose.describe_delivery_stream(DeliveryStreamName=f"{PREFIX}-stream")["DeliveryStreamDescription"][
        "Destinations"
    ][0]["ExtendedS3DestinationDescription"]
    assert destination["BucketARN"] == f"arn:aws:s3:::{buckets['raw']}"
    assert destination["Prefix"].startswith("raw/year=!{timestamp:yyyy}/month=!{timestamp:MM}/")
    assert destination["ErrorOutputPrefix"].startswith("errors/!{firehose:error-output-type}/")
    assert destination["CompressionFormat"] == "GZIP"
    assert destination["BufferingHints"] == {"IntervalInSeconds": 300, "SizeInMBs": 5}

    firehose_policy = iam.get_role_policy(RoleName=f"{PREFIX}-firehose-role", PolicyName="least-privilege")
    put = firehose_policy["PolicyDocument"]["Statement"][0]
    assert put["Resource"] == [f"arn:aws:s3:::{buckets['raw']}/raw/*", f"arn:aws:s3:::{buckets['raw']}/errors/*"]
    rule_policy = iam.get_role_policy(RoleName=f"{PREFIX}-iot-rule-role", PolicyName="least-privilege")
    assert (
        rule_policy["PolicyDocument"]["Statement"][0]["Resource"]
        == f"arn:aws:firehose:{REGION}:{ACCOUNT}:deliverystream/{PREFIX}-stream"
    )

    job = glue.get_job(JobName=f"{PREFIX}-raw-to-curated")["Job"]
    assert job["Command"]["ScriptLocation"] == f"s3://{buckets['artifacts']}/scripts/glue_job.py"
    assert job["DefaultArguments"]["--raw-path"] == f"s3://{buckets['raw']}/raw/"
    script = s3.get_object(Bucket=buckets["artifacts"], Key="scripts/glue_job.py")["Body"].read()
    assert script == (REPO / "ingestion" / "glue_job.py").read_bytes()
    crawler = glue.get_crawler(Name=f"{PREFIX}-curated-crawler")["Crawler"]
    assert [t["Path"] for t in crawler["Targets"]["S3Targets"]] == [
        f"s3://{buckets['curated']}/readings/",
        f"s3://{buckets['curated']}/quarantine/",
    ]
    # #25: the workgroup `python -m ingestion.query --athena` runs queries/ in (DuckDB's engine)
    group = aws("athena").get_work_group(WorkGroup=f"{PREFIX}-duckdb")["WorkGroup"]["Configuration"]
    assert group["EngineVersion"]["SelectedEngineVersion"] == "DuckDB"
    assert group["ResultConfiguration"]["OutputLocation"] == f"s3://{buckets['results']}/athena/"
    assert group["EnforceWorkGroupConfiguration"] is True

    settings = json.loads((state / "settings.json").read_text())
    assert [d["topic"] for d in settings["devices"]] == [f"{PREFIX}/{PREFIX}-sensor-{n}/telemetry" for n in (1, 2)]
    for device in settings["devices"]:
        assert stat.S_IMODE(os.stat(device["key"]).st_mode) == 0o600
        assert Path(device["cert"]).read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert settings["endpoint"] and settings["resources"]["firehose_stream"] == f"{PREFIX}-stream"


def test_aws_error_is_one_line_and_nonzero(aws, tmp_path, capsys):
    """A missing permission (botocore answers AccessDenied for CreateBucket) ends the run cleanly."""
    import boto3
    from botocore.exceptions import ClientError

    from ingestion import infra

    session = boto3.Session(region_name=REGION)

    def deny(**_):
        raise ClientError(
            {"Error": {"Code": "AccessDenied", "Message": "not authorized to perform s3:CreateBucket"}}, "CreateBucket"
        )

    session.events.register("before-call.s3.CreateBucket", deny)
    code = infra.main(["up", "--prefix", "denied-test", "--state-dir", str(tmp_path)], session=session)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert err == [
        "error: CreateBucket failed: AccessDenied: not authorized to perform s3:CreateBucket "
        "-- the credentials or the role lack a permission (see the message)"
    ]


def test_bad_config_names_the_field(tmp_path):
    config = tmp_path / "ingestion.json"
    config.write_text(json.dumps({"prefix": "Bad_Prefix", "devices": 2}))
    result = subprocess.run(
        [sys.executable, "-m", "ingestion.infra", "plan", "--config", str(config)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert result.stderr.strip().startswith(f"error: {config}: prefix: Value error, 3-32 lowercase letters")


@pytest.mark.unit
def test_buckets_refuse_plain_http_where_requests_carry_tls():
    """#23 (low): every ingestion bucket gets a policy denying requests without TLS (aws:SecureTransport),
    put and checked over a TLS endpoint (AWS); a plain-HTTP endpoint (moto server) is told, not locked out."""
    import boto3
    from botocore.stub import ANY, Stubber

    from ingestion import infra as ingestion_infra
    from ingestion.config import IngestionConfig

    session = boto3.Session(aws_access_key_id="x", aws_secret_access_key="x", region_name=REGION)
    ctx = ingestion_infra.Context(IngestionConfig(prefix=PREFIX), session, apply=True, account=ACCOUNT, region=REGION)
    s3 = ctx.client("s3")
    name = ctx.bucket("results")
    policy = ingestion_infra.tls_only_policy(name)
    (statement,) = policy["Statement"]
    assert statement["Effect"] == "Deny" and statement["Action"] == "s3:*" and statement["Principal"] == "*"
    assert statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert statement["Resource"] == [f"arn:aws:s3:::{name}", f"arn:aws:s3:::{name}/*"]
    with Stubber(s3) as stub:
        stub.add_response("put_bucket_encryption", {}, {"Bucket": name, "ServerSideEncryptionConfiguration": ANY})
        stub.add_response("put_public_access_block", {}, {"Bucket": name, "PublicAccessBlockConfiguration": ANY})
        stub.add_response("put_bucket_policy", {}, {"Bucket": name, "Policy": json.dumps(policy)})
        ingestion_infra.apply_bucket_settings(ctx, name, versioned=False)
        stub.assert_no_pending_responses()

    plain = boto3.Session(aws_access_key_id="x", aws_secret_access_key="x", region_name=REGION)
    http_ctx = ingestion_infra.Context(
        IngestionConfig(prefix=PREFIX), plain, apply=True, account=ACCOUNT, region=REGION
    )
    http_ctx._clients["s3"] = plain.client("s3", endpoint_url="http://127.0.0.1:9")
    assert ingestion_infra.over_tls(ctx) and not ingestion_infra.over_tls(http_ctx)
