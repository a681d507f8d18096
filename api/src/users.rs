//! Users and drivers: the plain tables of `migrations/sql/0003_users.sql`.

use chrono::{DateTime, Utc};
use domain::msisdn::Msisdn;
use domain::vehicle::{Plate, VehicleType};
use domain::{DomainError, ErrorCode, Role, UserId};
use serde::Serialize;
use sqlx::PgPool;
use utoipa::ToSchema;
use uuid::Uuid;

/// A user as the API shows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema, sqlx::FromRow)]
pub struct User {
    /// The user id.
    #[sqlx(rename = "user_id")]
    pub id: Uuid,
    /// Normalised MSISDN (`62…`).
    pub msisdn: String,
    /// `passenger`, `driver` or `analyst`.
    pub role: String,
    /// Display name, if any.
    pub fullname: Option<String>,
}

impl User {
    /// The user's id.
    pub fn user_id(&self) -> UserId {
        UserId::from_uuid(self.id)
    }

    /// The user's role.
    pub fn role(&self) -> Role {
        match self.role.as_str() {
            "driver" => Role::Driver,
            "analyst" => Role::Analyst,
            _ => Role::Passenger,
        }
    }
}

/// A driver's vehicle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema, sqlx::FromRow)]
pub struct Vehicle {
    /// `motorcycle`, `car` or `van`.
    pub vehicle_type: String,
    /// Normalised plate (`B 1234 XYZ`).
    pub vehicle_plate: String,
    /// When the user became a driver.
    pub registered_at: DateTime<Utc>,
}

const USER_COLUMNS: &str = "user_id, msisdn, role, fullname";

/// The user with this MSISDN, created as a passenger if there is none.
pub async fn login(pool: &PgPool, msisdn: &Msisdn, now: DateTime<Utc>) -> Result<User, sqlx::Error> {
    sqlx::query(
        "INSERT INTO users (user_id, msisdn, role, fullname, created_at) \
         VALUES ($1, $2, 'passenger', NULL, $3) ON CONFLICT (msisdn) DO NOTHING",
    )
    .bind(Uuid::now_v7())
    .bind(msisdn.as_str())
    .bind(now)
    .execute(pool)
    .await?;
    sqlx::query_as(&format!("SELECT {USER_COLUMNS} FROM users WHERE msisdn = $1"))
        .bind(msisdn.as_str())
        .fetch_one(pool)
        .await
}

/// A user by id.
pub async fn find(pool: &PgPool, id: UserId) -> Result<Option<User>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {USER_COLUMNS} FROM users WHERE user_id = $1"))
        .bind(id.as_uuid())
        .fetch_optional(pool)
        .await
}

/// A driver's vehicle, if they are one.
pub async fn vehicle(pool: &PgPool, id: UserId) -> Result<Option<Vehicle>, sqlx::Error> {
    sqlx::query_as("SELECT vehicle_type, vehicle_plate, registered_at FROM drivers WHERE user_id = $1")
        .bind(id.as_uuid())
        .fetch_optional(pool)
        .await
}

/// Why a registration failed.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// A refusal for the caller.
    #[error("{0}")]
    Refused(DomainError),
    /// PostgreSQL failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Makes a passenger a driver, once; plates are unique across drivers.
pub async fn register_driver(
    pool: &PgPool,
    id: UserId,
    vehicle_type: VehicleType,
    plate: &Plate,
    now: DateTime<Utc>,
) -> Result<(User, Vehicle), RegisterError> {
    let mut tx = pool.begin().await?;
    let user: Option<User> = sqlx::query_as(&format!(
        "SELECT {USER_COLUMNS} FROM users WHERE user_id = $1 FOR UPDATE"
    ))
    .bind(id.as_uuid())
    .fetch_optional(&mut *tx)
    .await?;
    let Some(user) = user else {
        return Err(RegisterError::Refused(DomainError::not_found("no such user")));
    };
    match user.role() {
        Role::Passenger => {}
        Role::Driver => {
            return Err(RegisterError::Refused(DomainError::new(
                ErrorCode::Conflict,
                "already registered as a driver",
            )))
        }
        Role::Analyst | Role::System => {
            return Err(RegisterError::Refused(DomainError::forbidden(
                "analysts cannot register as drivers",
            )))
        }
    }
    let inserted = sqlx::query(
        "INSERT INTO drivers (user_id, vehicle_type, vehicle_plate, registered_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(id.as_uuid())
    .bind(vehicle_type.as_str())
    .bind(plate.as_str())
    .bind(now)
    .execute(&mut *tx)
    .await;
    if let Err(sqlx::Error::Database(db)) = &inserted {
        if db.constraint() == Some("drivers_vehicle_plate_key") {
            return Err(RegisterError::Refused(DomainError::new(
                ErrorCode::PlateTaken,
                format!("plate {plate} is already registered"),
            )));
        }
    }
    inserted?;
    let user: User = sqlx::query_as(&format!(
        "UPDATE users SET role = 'driver' WHERE user_id = $1 RETURNING {USER_COLUMNS}"
    ))
    .bind(id.as_uuid())
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok((
        user,
        Vehicle {
            vehicle_type: vehicle_type.as_str().into(),
            vehicle_plate: plate.as_str().into(),
            registered_at: now,
        },
    ))
}

/// Creates an analyst (the operator's `nebengjek user create-analyst`), or makes an
/// existing passenger one. A driver stays a driver (refused).
pub async fn create_analyst(
    pool: &PgPool,
    msisdn: &Msisdn,
    fullname: Option<&str>,
    now: DateTime<Utc>,
) -> Result<User, RegisterError> {
    let user: Option<User> = sqlx::query_as(&format!(
        "INSERT INTO users (user_id, msisdn, role, fullname, created_at) VALUES ($1, $2, 'analyst', $3, $4) \
         ON CONFLICT (msisdn) DO UPDATE SET role = 'analyst', \
           fullname = COALESCE(EXCLUDED.fullname, users.fullname) \
         WHERE users.role <> 'driver' RETURNING {USER_COLUMNS}"
    ))
    .bind(Uuid::now_v7())
    .bind(msisdn.as_str())
    .bind(fullname)
    .bind(now)
    .fetch_optional(pool)
    .await?;
    user.ok_or_else(|| {
        RegisterError::Refused(DomainError::new(
            ErrorCode::Conflict,
            format!("{msisdn} is a driver and cannot become an analyst"),
        ))
    })
}
