# Trainer image for Vertex AI custom jobs (docs/cloud.md):
#   docker build -t IMAGE . && docker run --gpus all IMAGE --data-dir gs://... --job-dir gs://... --model temp-gru
# TensorFlow's GPU image of the version requirements.txt pins; its Python is 3.11, the
# version the project is tested with and the one Dockerfile.dataflow's Beam image uses.
FROM tensorflow/tensorflow:2.21.0-gpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=2

# Vertex AI runs the container as whichever user the image names, so training does not need root.
RUN useradd --create-home --uid 10001 trainer

WORKDIR /app
COPY requirements.txt ./
# requirements.txt pins tensorflow-cpu, the CPU build the tests run on. It installs into the
# same tensorflow/ package folder as the base image's GPU build and would overwrite it, so it
# is left out here; every other pin installs exactly as tested. "tensorflow[and-cuda]" at the
# base image's version keeps that TensorFlow (already installed) and only adds the CUDA and
# cuDNN wheels TensorFlow was built against: the -gpu images since 2.18 are reported to ship a
# system cuDNN that TensorFlow cannot use (tensorflow/tensorflow#62412), which hides the GPU.
# cloudml-hypertune reports the dev CCC in hyperparameter tuning jobs (model/training/hypertune.py).
RUN sed '/^tensorflow-cpu==/d' requirements.txt > /tmp/requirements-gpu.txt \
    && python -m pip install --no-cache-dir -r /tmp/requirements-gpu.txt \
        "tensorflow[and-cuda]==2.21.0" "cloudml-hypertune==0.1.0.dev6" \
    && rm /tmp/requirements-gpu.txt
# mimalloc (cmeel-mimalloc, requirements.txt) under every process of the image: on glibc malloc
# the CPU training step is page-fault bound and 2x slower (docs/performance.md). trainer.py
# would re-execute itself with it anyway (model/training/allocator.py); this covers every other command.
RUN ln -s "$(python -c "from importlib import metadata; \
print(metadata.distribution('cmeel-mimalloc').locate_file('cmeel.prefix/lib/libmimalloc.so.3'))")" \
        /usr/local/lib/libmimalloc.so.3
ENV LD_PRELOAD=/usr/local/lib/libmimalloc.so.3 \
    MIMALLOC_PURGE_DELAY=-1

COPY setup.py pyproject.toml README.md LICENSE trainer.py ./
COPY pipeline ./pipeline
COPY model ./model
# --no-deps: every dependency is already installed above at its pin; pyproject.toml's ranges
# must not move any of them.
# The check fails the build if the base image is not what this file assumes or if
# anything above replaced the GPU build of TensorFlow.
RUN python -m pip install --no-cache-dir --no-deps . \
    && python -c "import sys, tensorflow as tf; \
assert sys.version_info[:2] == (3, 11), sys.version; \
assert 'libmimalloc' in open('/proc/self/maps').read(), 'mimalloc is not preloaded'; \
assert tf.__version__ == '2.21.0' and tf.test.is_built_with_cuda(), tf.__version__"

USER 10001
ENTRYPOINT ["python", "trainer.py"]
