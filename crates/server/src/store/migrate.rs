//! A small migration runner: numbered SQL files per backend, applied once each.

use sqlx::{AnyPool, Executor};

use super::{Backend, Result, Store};

struct Migration {
    component: &'static str,
    version: i64,
    sql: &'static str,
}

fn migrations(backend: Backend) -> [Migration; 15] {
    match backend {
        Backend::Sqlite => [
            Migration {
                component: "main",
                version: 1,
                sql: include_str!("../../migrations/sqlite/0001_init.sql"),
            },
            Migration {
                component: "main",
                version: 2,
                sql: include_str!("../../migrations/sqlite/0002_files.sql"),
            },
            Migration {
                component: "main",
                version: 3,
                sql: include_str!("../../migrations/sqlite/0003_agents_gpus.sql"),
            },
            Migration {
                component: "main",
                version: 4,
                sql: include_str!("../../migrations/sqlite/0004_sessions.sql"),
            },
            Migration {
                component: "main",
                version: 5,
                sql: include_str!("../../migrations/sqlite/0005_dashboard.sql"),
            },
            Migration {
                component: "main",
                version: 6,
                sql: include_str!("../../migrations/sqlite/0006_provisioned.sql"),
            },
            Migration {
                component: "main",
                version: 7,
                sql: include_str!("../../migrations/sqlite/0007_server_meta.sql"),
            },
            Migration {
                component: "main",
                version: 8,
                sql: include_str!("../../migrations/sqlite/0008_templates.sql"),
            },
            Migration {
                component: "main",
                version: 9,
                sql: include_str!("../../migrations/sqlite/0009_concurrency.sql"),
            },
            Migration {
                component: "main",
                version: 10,
                sql: include_str!("../../migrations/sqlite/0010_groups_deps.sql"),
            },
            Migration {
                component: "main",
                version: 11,
                sql: include_str!("../../migrations/sqlite/0011_schedules.sql"),
            },
            Migration {
                component: "main",
                version: 12,
                sql: include_str!("../../migrations/sqlite/0012_log_path.sql"),
            },
            Migration {
                component: "logs",
                version: 1,
                sql: include_str!("../../migrations/sqlite/logs_0001_init.sql"),
            },
            Migration {
                component: "logs",
                version: 2,
                sql: include_str!("../../migrations/sqlite/logs_0002_chunks.sql"),
            },
            Migration {
                component: "logs",
                version: 3,
                sql: include_str!("../../migrations/sqlite/logs_0003_objects.sql"),
            },
        ],
        Backend::Postgres => [
            Migration {
                component: "main",
                version: 1,
                sql: include_str!("../../migrations/postgres/0001_init.sql"),
            },
            Migration {
                component: "main",
                version: 2,
                sql: include_str!("../../migrations/postgres/0002_files.sql"),
            },
            Migration {
                component: "main",
                version: 3,
                sql: include_str!("../../migrations/postgres/0003_agents_gpus.sql"),
            },
            Migration {
                component: "main",
                version: 4,
                sql: include_str!("../../migrations/postgres/0004_sessions.sql"),
            },
            Migration {
                component: "main",
                version: 5,
                sql: include_str!("../../migrations/postgres/0005_dashboard.sql"),
            },
            Migration {
                component: "main",
                version: 6,
                sql: include_str!("../../migrations/postgres/0006_provisioned.sql"),
            },
            Migration {
                component: "main",
                version: 7,
                sql: include_str!("../../migrations/postgres/0007_server_meta.sql"),
            },
            Migration {
                component: "main",
                version: 8,
                sql: include_str!("../../migrations/postgres/0008_templates.sql"),
            },
            Migration {
                component: "main",
                version: 9,
                sql: include_str!("../../migrations/postgres/0009_concurrency.sql"),
            },
            Migration {
                component: "main",
                version: 10,
                sql: include_str!("../../migrations/postgres/0010_groups_deps.sql"),
            },
            Migration {
                component: "main",
                version: 11,
                sql: include_str!("../../migrations/postgres/0011_schedules.sql"),
            },
            Migration {
                component: "main",
                version: 12,
                sql: include_str!("../../migrations/postgres/0012_log_path.sql"),
            },
            Migration {
                component: "logs",
                version: 1,
                sql: include_str!("../../migrations/postgres/logs_0001_init.sql"),
            },
            Migration {
                component: "logs",
                version: 2,
                sql: include_str!("../../migrations/postgres/logs_0002_chunks.sql"),
            },
            Migration {
                component: "logs",
                version: 3,
                sql: include_str!("../../migrations/postgres/logs_0003_objects.sql"),
            },
        ],
    }
}

/// Applies every migration not applied yet, each in its own transaction.
pub async fn run(store: &Store) -> Result<()> {
    for m in migrations(store.backend) {
        let pool = match m.component {
            "logs" => &store.logs_write,
            _ => &store.write,
        };
        apply(pool, &m).await?;
    }
    Ok(())
}

async fn apply(pool: &AnyPool, m: &Migration) -> Result<()> {
    pool.execute(
        "CREATE TABLE IF NOT EXISTS drover_migrations (component TEXT NOT NULL, version BIGINT NOT NULL, PRIMARY KEY (component, version))",
    )
    .await?;
    let mut tx = pool.begin().await?;
    let done: Option<i64> = sqlx::query_scalar(
        "SELECT version FROM drover_migrations WHERE component = $1 AND version = $2",
    )
    .bind(m.component)
    .bind(m.version)
    .fetch_optional(&mut *tx)
    .await?;
    if done.is_none() {
        for stmt in m.sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            tx.execute(stmt).await?;
        }
        sqlx::query("INSERT INTO drover_migrations (component, version) VALUES ($1, $2)")
            .bind(m.component)
            .bind(m.version)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}
