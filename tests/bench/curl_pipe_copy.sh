#!/usr/bin/env bash
# Copies an image between two plain-HTTP registries with curl alone. Each blob is one
# streaming GET from the source piped into one PUT to the target, after the POST that opens
# the upload, with at most JOBS blobs at a time. Each manifest follows the same way, the tag last.
# Nothing checks digests or sizes on the way, so this is the transfer floor that a copy tool
# is measured against, not a copy tool.
#
# Usage: curl_pipe_copy.sh SOURCE_HOST SOURCE_REPO TARGET_HOST TARGET_REPO JOBS PLAN_FILE
# PLAN_FILE lines, in order: "blob DIGEST SIZE", then "manifest REFERENCE MEDIA_TYPE SIZE",
# where REFERENCE is a digest or, for the root, the tag, which must come last.
set -euo pipefail

if (($# != 6)); then
  echo "usage: $0 SOURCE_HOST SOURCE_REPO TARGET_HOST TARGET_REPO JOBS PLAN_FILE" >&2
  exit 2
fi
source_url="http://$1/v2/$2"
target_host=$3
target_url="http://$3/v2/$4"
jobs=$5
plan_file=$6

# Streams one blob from the source into a new upload in the target.
copy_blob() {
  local digest=$1 size=$2 location
  location=$(curl -sS -f -X POST -o /dev/null -w '%header{location}' "$target_url/blobs/uploads/")
  [[ -n "$location" ]] || {
    echo "error: the target returned no upload location for $digest" >&2
    return 1
  }
  [[ "$location" == http* ]] || location="http://$target_host$location"
  case "$location" in *\?*) location+="&digest=$digest" ;; *) location+="?digest=$digest" ;; esac
  # Content-Length with an empty Transfer-Encoding makes curl stream stdin unchunked, the way
  # a copy tool sends a blob of known size.
  curl -sS -f "$source_url/blobs/$digest" |
    curl -sS -f -o /dev/null -X PUT -T - -H "Content-Length: $size" -H 'Transfer-Encoding:' \
      -H 'Content-Type: application/octet-stream' "$location"
}

copy_manifest() {
  local reference=$1 media_type=$2 size=$3
  curl -sS -f -H "Accept: $media_type" "$source_url/manifests/$reference" |
    curl -sS -f -o /dev/null -X PUT -T - -H "Content-Length: $size" -H 'Transfer-Encoding:' \
      -H "Content-Type: $media_type" "$target_url/manifests/$reference"
}

running=0
while read -r kind first second third; do
  case "$kind" in
    blob)
      if ((running >= jobs)); then
        wait -n
        running=$((running - 1))
      fi
      copy_blob "$first" "$second" &
      running=$((running + 1))
      ;;
    manifest)
      # Every blob must be in the target before the first manifest that refers to it.
      while ((running > 0)); do
        wait -n
        running=$((running - 1))
      done
      copy_manifest "$first" "$second" "$third"
      ;;
    *)
      echo "error: unknown line in $plan_file: $kind $first" >&2
      exit 2
      ;;
  esac
done <"$plan_file"
while ((running > 0)); do
  wait -n
  running=$((running - 1))
done
