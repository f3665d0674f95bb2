#!/usr/bin/env bash
# Build the Lambda image with the model baked in, push it to ECR, deploy the SAM stack.
#
#   bash scripts/serve_deploy.sh MODEL_DIR [STACK_NAME]
#
# MODEL_DIR holds model.pt + model.json (`python -m train export RUN_URI MODEL_DIR`).
# Needs docker, the AWS CLI and the SAM CLI, with credentials for the target account;
# AWS_REGION (default eu-west-1) and ECR_REPOSITORY (default lakeclean-serve) pick where.
set -euo pipefail
cd "$(dirname "$0")/.."
model_dir=${1:?usage: serve_deploy.sh MODEL_DIR [STACK_NAME]}
stack=${2:-lakeclean-serve}
region=${AWS_REGION:-eu-west-1}
repository=${ECR_REPOSITORY:-lakeclean-serve}

# 1. Stage the model where the Dockerfile (and its .dockerignore) expects it.
rm -rf out/model && mkdir -p out/model
cp "$model_dir/model.pt" "$model_dir/model.json" out/model/
tag=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["sha256"][:12])' out/model/model.json)

# 2. Build (the root .dockerignore keeps the context small).
DOCKER_BUILDKIT=1 docker build --platform linux/amd64 --provenance=false \
  -f serve_lambda/Dockerfile --build-arg MODEL_DIR=out/model -t "$repository:$tag" .

# 3. Push to ECR (the repository is created on first use).
account=$(aws sts get-caller-identity --query Account --output text)
registry="$account.dkr.ecr.$region.amazonaws.com"
aws ecr describe-repositories --region "$region" --repository-names "$repository" >/dev/null 2>&1 ||
  aws ecr create-repository --region "$region" --repository-name "$repository" >/dev/null
aws ecr get-login-password --region "$region" | docker login --username AWS --password-stdin "$registry"
docker tag "$repository:$tag" "$registry/$repository:$tag"
docker push "$registry/$repository:$tag"

# 4. Deploy the stack (HTTP API, REST API, Function URL); the outputs list the URLs.
sam deploy --template-file serve_lambda/template.yaml --stack-name "$stack" --region "$region" \
  --capabilities CAPABILITY_IAM --image-repository "$registry/$repository" \
  --parameter-overrides "ImageUri=$registry/$repository:$tag" --no-fail-on-empty-changeset
aws cloudformation describe-stacks --region "$region" --stack-name "$stack" \
  --query "Stacks[0].Outputs" --output table
