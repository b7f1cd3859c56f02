//! WebSocket (HTTP/1.1 `Upgrade`) tunnelling: the upgrade request goes to the upstream on a
//! dedicated connection; on `101` both sides are upgraded and bytes are copied until either closes.

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::body::{boxed, ResponseBody};
use super::hcm::RequestMeta;
use super::local_reply;
use crate::upstream::lb::LbContext;
use crate::upstream::manager::ClusterState;

pub async fn tunnel(mut req: Request<Incoming>, cluster: &ClusterState, meta: &RequestMeta) -> Response<ResponseBody> {
    let Some(host) = cluster.choose_host(&LbContext::default()) else {
        return local_reply::reply(StatusCode::SERVICE_UNAVAILABLE, local_reply::NO_HEALTHY_UPSTREAM, meta.grpc);
    };
    let stream = match cluster.connector.connect(host.address, None, None).await {
        Ok(s) => s,
        Err(e) => {
            return local_reply::reply(
                StatusCode::SERVICE_UNAVAILABLE,
                &local_reply::connect_failure_body(e.reset_reason(), false),
                meta.grpc,
            )
        }
    };
    let (mut sender, conn) = match hyper::client::conn::http1::handshake(stream).await {
        Ok(x) => x,
        Err(_) => return local_reply::reply(StatusCode::SERVICE_UNAVAILABLE, local_reply::RESET_BODY, meta.grpc),
    };
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    let downstream_upgrade = hyper::upgrade::on(&mut req);
    let (parts, _body) = req.into_parts();
    let mut up = Request::from_parts(parts, http_body_util::Empty::<bytes::Bytes>::new());
    *up.version_mut() = http::Version::HTTP_11;
    *up.uri_mut() = up.uri().path_and_query().map(|pq| pq.as_str().parse().unwrap_or_default()).unwrap_or_default();
    cluster.stats.rq_total.inc();
    let mut resp = match sender.send_request(up).await {
        Ok(r) => {
            cluster.stats.record_status(r.status().as_u16());
            r
        }
        Err(_) => return local_reply::reply(StatusCode::SERVICE_UNAVAILABLE, local_reply::RESET_BODY, meta.grpc),
    };
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        let (parts, body) = resp.into_parts();
        return Response::from_parts(parts, boxed(body));
    }
    let upstream_upgrade = hyper::upgrade::on(&mut resp);
    tokio::spawn(async move {
        let (Ok(down), Ok(up)) = (downstream_upgrade.await, upstream_upgrade.await) else {
            return;
        };
        let mut down = TokioIo::new(down);
        let mut up = TokioIo::new(up);
        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
    });
    let (parts, _) = resp.into_parts();
    Response::from_parts(parts, super::body::empty())
}
