# One image for the API and the admin page (docker-compose.yml picks the command).
FROM python:3.11-slim
WORKDIR /app
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
# CPU torch from PyTorch's CPU index keeps the image small; a GPU image would start from a CUDA base.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY backend ./backend
COPY migrations ./migrations
COPY admin_ui ./admin_ui
RUN pip install -e '.[postgres,milvus,video]'
EXPOSE 8000 8501
CMD ["childface", "serve", "--host", "0.0.0.0"]
