-- wrk: POST one OpenAI-style chat request (the body is set by the BODY env variable).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer unused"
wrk.body = os.getenv("BODY") or '{"model":"bench-model","messages":[{"role":"user","content":"Say something short."}],"max_tokens":64}'
