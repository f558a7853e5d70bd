"""awsinfra: the one CloudFormation engine, on in-process moto. One small template with a resource of
each kind moto's CloudFormation skips or half-applies; every completion checked through the
service's own API; a re-deploy changing nothing; destroy removing what was completed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from awsinfra import clients
from awsinfra.cloudformation import Completed, Completer, Resolver, Stack, StackError, load_template, parse_template
from awsinfra.errors import error_code

pytestmark = pytest.mark.unit

TEMPLATE = """
AWSTemplateFormatVersion: "2010-09-09"
Parameters:
  Name: {Type: String, Default: demo}
  Env: {Type: String, Default: dev, AllowedValues: [dev, prod]}
Mappings:
  Sizes:
    dev: {Retention: "7"}
    prod: {Retention: "30"}
Conditions:
  IsProd: !Equals [!Ref Env, prod]
Resources:
  Data:
    Type: AWS::S3::Bucket
    DeletionPolicy: Retain
    UpdateReplacePolicy: Retain
    Properties:
      BucketName: !Sub "${Name}-data-${AWS::AccountId}"
      VersioningConfiguration: {Status: Enabled}
      PublicAccessBlockConfiguration:
        {BlockPublicAcls: true, BlockPublicPolicy: true, IgnorePublicAcls: true, RestrictPublicBuckets: true}
  Topic:
    Type: AWS::SNS::Topic
    Properties: {TopicName: !Sub "${Name}-topic"}
  Queue:
    Type: AWS::SQS::Queue
    Properties:
      QueueName: !Join ["-", [!Ref Name, queue, !FindInMap [Sizes, !Ref Env, Retention]]]
  TopicToQueue:
    Type: AWS::SNS::Subscription
    Properties: {TopicArn: !Ref Topic, Protocol: sqs, Endpoint: !GetAtt Queue.Arn, RawMessageDelivery: true}
  QueuePolicy:
    Type: AWS::SQS::QueuePolicy
    Properties:
      Queues: [!Ref Queue]
      PolicyDocument:
        Version: "2012-10-17"
        Statement:
          - Sid: TopicSends
            Effect: Allow
            Principal: {Service: sns.amazonaws.com}
            Action: sqs:SendMessage
            Resource: !GetAtt Queue.Arn
            Condition: {ArnEquals: {aws:SourceArn: !Ref Topic}}
  Models:
    Type: AWS::SageMaker::ModelPackageGroup
    Properties: {ModelPackageGroupName: !Sub "${Name}-models"}
  Errors:
    Type: AWS::CloudWatch::Alarm
    Properties:
      AlarmName: !If [IsProd, !Sub "${Name}-prod-errors", !Sub "${Name}-dev-errors"]
      Namespace: AWS/SQS
      MetricName: ApproximateNumberOfMessagesVisible
      Dimensions: [{Name: QueueName, Value: !GetAtt Queue.QueueName}]
      Statistic: Maximum
      Period: 60
      EvaluationPeriods: 1
      Threshold: 100
      ComparisonOperator: GreaterThanThreshold
Outputs:
  QueueUrl: {Value: !Ref Queue}
  BucketName: {Value: !Ref Data}
"""


@pytest.fixture
def template(tmp_path: Path) -> Path:
    path = tmp_path / "template.yaml"
    path.write_text(TEMPLATE)
    return path


def test_deploy_completes_what_moto_skipped_and_redeploy_changes_nothing(offline_aws, template):
    aws, said = clients.Aws(), []
    first = Stack("demo-stack", template).apply(aws, said.append)
    assert first.action == "created" and first.status == "CREATE_COMPLETE"
    assert {c.logical_id: c.action for c in first.completed} == {
        "Data": "updated",
        "TopicToQueue": "created",
        "QueuePolicy": "created",
        "Models": "created",
        "Errors": "created",
    }
    assert "completed TopicToQueue (AWS::SNS::Subscription) through its service API" in said
    bucket, queue = first.outputs["BucketName"], first.outputs["QueueUrl"]
    assert bucket == "demo-data-123456789012" and queue.endswith("/demo-queue-7")  # Sub, Join, FindInMap

    # each completion, through the service's own API
    s3, sqs, sns = aws("s3"), aws("sqs"), aws("sns")
    assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
    assert all(s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"].values())
    [statement] = json.loads(
        sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["Policy"])["Attributes"]["Policy"]
    )["Statement"]
    assert statement["Resource"].endswith(":demo-queue-7") and statement["Sid"] == "TopicSends"
    topic = "arn:aws:sns:us-east-1:123456789012:demo-topic"
    [subscription] = sns.list_subscriptions_by_topic(TopicArn=topic)["Subscriptions"]
    assert subscription["Endpoint"].endswith(":demo-queue-7") and subscription["Protocol"] == "sqs"
    assert aws("sagemaker").describe_model_package_group(ModelPackageGroupName="demo-models")
    [alarm] = aws("cloudwatch").describe_alarms(AlarmNames=["demo-dev-errors"])["MetricAlarms"]  # If: dev
    assert alarm["Dimensions"] == [{"Name": "QueueName", "Value": "demo-queue-7"}]  # GetAtt Queue.QueueName

    said.clear()
    again = Stack("demo-stack", template).apply(aws, said.append)
    assert again.action == "unchanged" and all(c.action == "present" for c in again.completed)
    assert said == ["stack demo-stack: no changes (same template and parameters)"]
    assert set(Stack("demo-stack", template).completed(aws)) == {"TopicToQueue", "QueuePolicy", "Models", "Errors"}


def test_destroy_removes_what_was_completed_and_keeps_data_unless_asked(offline_aws, template):
    aws = clients.Aws()
    stack = Stack("demo-stack", template)
    outputs = stack.deploy(aws, say=lambda _: None)
    aws("s3").put_object(Bucket=outputs["BucketName"], Key="keep/me", Body=b"1")
    gone = stack.destroy(aws, say=None)
    assert {r.logical_id: r.outcome for r in gone.removed}["Errors"] == "deleted"
    assert gone.buckets_kept == {outputs["BucketName"]: 1}
    assert aws("cloudwatch").describe_alarms(AlarmNames=["demo-dev-errors"])["MetricAlarms"] == []
    assert aws("sns").list_subscriptions()["Subscriptions"] == []
    assert stack.status(aws) is None and stack.completed(aws) == {}
    with pytest.raises(StackError, match="demo-stack: no such stack"):
        stack.destroy(aws, say=None)
    assert not stack.destroy(aws, say=None, missing_ok=True).stack_deleted

    # with delete_data a retained, versioned bucket is emptied (every version) and deleted
    stack = Stack("demo-stack", template, {"Name": "other"})  # the kept bucket holds the first name
    bucket = stack.deploy(aws, say=lambda _: None)["BucketName"]
    aws("s3").put_object(Bucket=bucket, Key="a", Body=b"1")
    aws("s3").put_object(Bucket=bucket, Key="a", Body=b"2")  # a second version
    removed = stack.destroy(aws, delete_data=True, say=None)
    assert removed.buckets_deleted == [bucket]
    with pytest.raises(ClientError) as missing:
        aws("s3").head_bucket(Bucket=bucket)
    assert error_code(missing.value) in ("404", "NoSuchBucket")


def test_a_stack_registers_its_own_completer_and_a_parameter_change_updates(offline_aws, template):
    calls = []

    def models(aws, logical, props, resolver):
        calls.append((logical, props["ModelPackageGroupName"], resolver.ref("Env")))
        return Completed(props["ModelPackageGroupName"], "present")

    aws = clients.Aws()
    Stack("demo-stack", template).deploy(aws, say=lambda _: None)
    own = {"AWS::SageMaker::ModelPackageGroup": Completer(models, when="always")}
    said: list[str] = []
    deployment = Stack("demo-stack", template, {"Env": "prod"}, completers=own).apply(aws, said.append)
    assert deployment.action == "updated" and "updating stack demo-stack" in said
    assert calls == [("Models", "demo-models", "prod")]
    assert aws("cloudwatch").describe_alarms(AlarmNames=["demo-prod-errors"])["MetricAlarms"]


def test_an_unresolvable_template_is_a_named_error(offline_aws, tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text(
        "Resources:\n  Thing:\n    Type: AWS::Made::Up\n    Properties: {Name: x}\n"
        "  Q:\n    Type: AWS::SQS::Queue\n    Properties: {QueueName: q}\n"
    )
    with pytest.raises(StackError, match=r"Thing \(AWS::Made::Up\): skipped by CloudFormation"):
        Stack("odd", path).deploy(clients.Aws(), say=lambda _: None)


def test_resolver_intrinsics():
    template = parse_template(
        """
Parameters: {P: {Type: String}}
Mappings: {M: {a: {b: found}}}
Conditions:
  IsX: !Equals [!Ref P, x]
  Both: !And [!Condition IsX, !Not [!Equals [!Ref P, y]]]
Resources: {R: {Type: AWS::SQS::Queue}}
"""
    )
    resolver = Resolver(
        template, {"P": "x"}, {"R": "https://q/r"}, {"AWS::Region": "eu-west-1"}, lambda *a: ".".join(a)
    )
    value = resolver.value
    assert value({"Fn::Join": [",", ["a", {"Ref": "P"}]]}) == "a,x"
    assert value({"Fn::Select": [1, {"Fn::Split": ["/", "a/b/c"]}]}) == "b"
    assert value({"Fn::FindInMap": ["M", "a", "b"]}) == "found"
    assert value({"Fn::If": ["Both", "yes", "no"]}) == "yes"
    assert value({"Fn::Sub": ["${R}-${X}-${AWS::Region}", {"X": {"Ref": "P"}}]}) == "https://q/r-x-eu-west-1"
    assert value({"Fn::GetAtt": ["R", "Arn"]}) == "R.AWS::SQS::Queue.Arn"
    assert value({"A": {"Ref": "AWS::NoValue"}, "B": [1, {"Ref": "AWS::NoValue"}]}) == {"B": [1]}
    with pytest.raises(StackError, match="Ref Nope: not deployed"):
        value({"Ref": "Nope"})
    with pytest.raises(StackError, match="FindInMap M/a/z"):
        value({"Fn::FindInMap": ["M", "a", "z"]})


def test_serverless_and_mlops_templates_load_with_short_tags():
    from tests.conftest import REPO

    for path in (REPO / "serverless" / "template.yaml", REPO / "mlops" / "template.yaml"):
        resources = load_template(path)["Resources"]
        assert all("Type" in r for r in resources.values())
        assert "!" not in json.dumps(resources).replace("!=", "")


def test_clients_honour_endpoint_region_and_retries(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    s3 = clients.client("s3")
    assert s3.meta.endpoint_url == "http://127.0.0.1:1" and s3.meta.region_name == "eu-west-1"
    assert s3.meta.config.retries == {"total_max_attempts": 11, "mode": "standard"}  # 10 retries
    aws = clients.Aws(config=clients.retries("adaptive", 4))
    assert aws.offline and aws.region == "eu-west-1" and aws("sqs") is aws("sqs")
    assert aws("sqs").meta.config.retries == {"total_max_attempts": 5, "mode": "adaptive"}


def test_error_code_reads_botocore_errors_only():
    error = ClientError({"Error": {"Code": "ThrottlingException", "Message": "slow"}}, "Op")
    assert error_code(error) == "ThrottlingException" and error_code(ValueError("x")) == ""


def test_package_code_makes_clients_only_through_awsinfra():
    """One client factory: retries and AWS_ENDPOINT_URL are decided in awsinfra.clients, nowhere else."""
    from tests.conftest import REPO

    packages = ("sagemaker_deepar", "serverless", "mlops", "ingestion", "evaluation", "ecs", "local_test")
    offenders = [
        f"{path.relative_to(REPO)}:{number}"
        for package in packages
        for path in sorted((REPO / package).rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if "boto3.client(" in line
    ]
    assert offenders == []


def test_a_stack_whose_creation_failed_is_deleted_and_created_again(offline_aws, template):
    from moto.cloudformation.models import cloudformation_backends

    aws = clients.Aws()
    stack = Stack("demo-stack", template)
    stack.deploy(aws, say=lambda _: None)
    aws("s3").delete_bucket(Bucket="demo-data-123456789012")  # retained: would block the second create
    [failed] = cloudformation_backends[aws.account][aws.region].stacks.values()
    failed.status = "ROLLBACK_COMPLETE"  # what AWS leaves after a failed create: it can only be deleted
    said: list[str] = []
    again = stack.apply(aws, said.append)
    assert said[:2] == [
        "stack demo-stack: ROLLBACK_COMPLETE (its creation failed): deleting it to create it again",
        "creating stack demo-stack",
    ]
    assert again.action == "created" and again.status == "CREATE_COMPLETE"
