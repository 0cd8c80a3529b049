//! The smallest useful `lambda_http` function: every request gets 200 and a fixed JSON body.
//! `benches/lambda.sh` builds it with the same profile as Ferry's Lambdas and reports its zip
//! size and cold init beside theirs.

use lambda_http::{Body, Error, Request, Response, run, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    run(service_fn(|_: Request| async { Ok::<_, Error>(Response::new(Body::Text("{\"ok\":true}".into()))) })).await
}
