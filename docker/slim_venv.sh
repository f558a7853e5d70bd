#!/bin/sh
# Trim an installed venv to what runs: no installers, no dependencies' test suites, C/C++ headers,
# static libraries or test binaries, no debug symbols; then prove the stack still imports and computes.
#   docker/slim_venv.sh /opt/venv          (run in the image's build stage; needs binutils)
set -eu
venv=$1
site=$(echo "$venv"/lib/python3.*/site-packages)

# Installers: the image never installs anything at run time.
python -m pip uninstall -y -q pip setuptools wheel

# Test suites (a `testing` package is kept: torch and numpy import theirs).
find "$site" -type d -name tests -prune -exec rm -rf {} +
# Headers and static libraries are for compiling extensions against these packages.
rm -rf "$site"/torch/include "$site"/mxnet/include "$site"/pyarrow/include "$site"/numpy/core/include
find "$site" -name '*.a' -type f -delete
# torch's C++ test binaries and protoc; torch_shm_manager is kept (tensor sharing between processes).
rm -rf "$site"/torch/test "$site"/torch/lib/libtorchbind_test.so "$site"/torch/lib/libjitbackend_test.so
find "$site"/torch/bin -mindepth 1 ! -name torch_shm_manager -exec rm -rf {} +

# botocore ships the API models of ~440 services (~28 MB); the image calls S3 (DEEPAR_MODEL_URL,
# sagemaker_deepar/serving/model_fetch.py) and keeps STS for web-identity credentials. botocore's own files stay.
find "$site"/botocore/data -mindepth 1 -maxdepth 1 -type d ! -name s3 ! -name sts -exec rm -rf {} +

# Debug symbols: libtorch_cpu alone carries ~70 MB. Libraries grafted by auditwheel (*.libs/) were
# patched by patchelf, which strip can corrupt, so they are left alone.
find "$site" -path '*.libs' -prune -o -type f \( -name '*.so' -o -name '*.so.*' -o -name torch_shm_manager \) -print |
  while read -r lib; do
    if readelf -S "$lib" 2>/dev/null | grep -q '\.symtab'; then strip --strip-unneeded "$lib"; fi
  done

# The stripped libraries still load and compute (the image tests then train and serve both backends).
python - <<'PY'
import numpy as np, scipy.special, scipy.linalg, pandas as pd, pyarrow as pa, pyarrow.parquet  # noqa: E401
import torch, mxnet as mx, lightning.pytorch, flask, gunicorn, orjson, pydantic, pydantic_settings, statsforecast  # noqa: E401,F401
# The GluonTS models sagemaker_deepar builds (tests/test_image.py checks every import of the code).
import gluonts.torch.model.deepar, gluonts.mx.model.deepar, gluonts.mx.distribution, gluonts.evaluation  # noqa: E401,F401
import mlflow.pyfunc, mlflow.models, mlflow.tracking  # noqa: E401,F401 - tracking from the train job (mlflow-skinny)
a = torch.randn(64, 64)
assert torch.allclose(torch.linalg.inv(a) @ a, torch.eye(64), atol=1e-3)
assert float(mx.nd.dot(mx.nd.ones((4, 4)), mx.nd.ones((4, 4))).sum().asscalar()) == 64.0
assert abs(float(scipy.special.gammaln(5.0)) - np.log(24.0)) < 1e-9
assert np.allclose(scipy.linalg.inv(np.eye(3) * 2.0), np.eye(3) / 2.0)
assert pa.table(pd.DataFrame({"x": [1.0, 2.0]})).num_rows == 2
import botocore.session  # the kept service models still load
for service in ("s3", "sts"):
    botocore.session.get_session().create_client(service, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
print("venv trimmed: stack imports and computes")
PY
