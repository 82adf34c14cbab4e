# acmix-deploy container images.
#
#   CPU (default target):   docker build -t acmix-deploy .
#                           docker run --rm -v "$PWD:/work" acmix-deploy reparam /work/ckpt.pth --arch acmix_resnet50
#   GPU / TensorRT:         docker build --target gpu -t acmix-deploy:gpu .
#                           docker run --rm --gpus all -v "$PWD:/work" acmix-deploy:gpu info /work/deploy.pth
#
# TORCH_SPEC and PIP_EXTRA_INDEX_URL are build arguments: on Linux x86-64 the
# default PyPI torch wheel is a CUDA build; pass the index of CPU wheels through
# PIP_EXTRA_INDEX_URL (and a "+cpu" TORCH_SPEC) for a small CPU image.

ARG PYTHON_IMAGE=python:3.11-slim
ARG GPU_BASE_IMAGE=nvcr.io/nvidia/tensorrt:25.01-py3

FROM ${PYTHON_IMAGE} AS cpu
ARG TORCH_SPEC="torch==2.13.0"
ARG PIP_EXTRA_INDEX_URL=""
ENV PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /opt/acmix-deploy
COPY pyproject.toml README.md ./
COPY acmix_deploy ./acmix_deploy
RUN pip install "${TORCH_SPEC}" && pip install ".[demo]" \
    && useradd --create-home --uid 1000 acmix
USER acmix
WORKDIR /work
ENTRYPOINT ["acmix-deploy"]
CMD ["--help"]

# GPU image: NVIDIA's TensorRT container (CUDA, cuDNN, TensorRT and its Python
# bindings preinstalled) plus torch and this package with the ONNX extras.
FROM ${GPU_BASE_IMAGE} AS gpu
ARG TORCH_SPEC="torch>=2.4"
ENV PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /opt/acmix-deploy
COPY pyproject.toml README.md ./
COPY acmix_deploy ./acmix_deploy
RUN pip install "${TORCH_SPEC}" && pip install ".[demo,onnx]"
WORKDIR /work
ENTRYPOINT ["acmix-deploy"]
CMD ["--help"]

# Inference server: `acmix-deploy serve` (KServe v2 / Triton HTTP protocol) on port 8000.
#   docker build --target serve -t acmix-deploy:serve .
#   docker run --rm -p 127.0.0.1:8000:8000 -v "$PWD/model.onnx:/models/model.onnx:ro" acmix-deploy:serve
# The server listens on 0.0.0.0 inside the container; publish the port on the interface you mean.
# SIGTERM (docker stop) reaches the server as PID 1 and finishes the requests in flight.
FROM cpu AS serve
USER root
RUN cd /opt/acmix-deploy && pip install ".[onnx,serve]"
USER acmix
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready').status != 200)"
CMD ["serve", "/models/model.onnx", "--name", "model", "--host", "0.0.0.0", "--port", "8000"]

# Make the CPU image the default target.
FROM cpu
