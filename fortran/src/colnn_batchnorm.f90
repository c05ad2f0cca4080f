!> Batch normalization at inference: y = gamma (x - moving_mean) / sqrt(moving_variance + eps)
!> + beta, folded at load into y = x s + t. Epsilon, center and scale come from the file.
module colnn_batchnorm
  use colnn_kinds, only: wp, dp, i8
  use colnn_status
  use colnn_spec, only: layer_spec_t
  use colnn_layer, only: layer_t
  implicit none
  private

  public :: batchnorm_t

  type, extends(layer_t) :: batchnorm_t
    real(wp) :: epsilon = 0
    real(wp) :: momentum = 0
    logical :: center = .true., scale = .true.
    real(wp), allocatable :: gamma(:), beta(:), moving_mean(:), moving_variance(:)
    real(wp), allocatable :: s(:), t(:)
    real(wp), allocatable :: xhat(:, :), inv_std(:)     !< kept by forward_train
    real(wp), allocatable :: dgamma(:), dbeta(:)
  contains
    procedure :: init => batchnorm_init
    procedure :: forward => batchnorm_forward
    procedure :: describe => batchnorm_describe
    procedure :: type_name => batchnorm_type_name
    procedure :: is_elementwise => batchnorm_is_elementwise
    procedure :: apply_inplace => batchnorm_apply_inplace
    procedure :: num_params => batchnorm_num_params
    procedure :: forward_train => batchnorm_forward_train
    procedure :: backward => batchnorm_backward
    procedure :: num_trainable => batchnorm_num_trainable
    procedure :: get_params => batchnorm_get_params
    procedure :: set_params => batchnorm_set_params
    procedure :: get_grads => batchnorm_get_grads
    procedure :: num_state => batchnorm_num_state
    procedure :: get_state => batchnorm_get_state
    procedure :: set_state => batchnorm_set_state
  end type batchnorm_t

contains

  function batchnorm_type_name(self) result(name)
    class(batchnorm_t), intent(in) :: self
    character(len=:), allocatable :: name
    name = 'batch_normalization'
  end function batchnorm_type_name

  subroutine batchnorm_init(self, spec, n_in, stat, errmsg)
    class(batchnorm_t), intent(inout) :: self
    type(layer_spec_t), intent(inout) :: spec
    integer, intent(in) :: n_in
    integer, intent(out) :: stat
    character(len=:), allocatable, intent(out) :: errmsg
    self%n_in = n_in
    self%n_out = n_in
    call spec%get_real('epsilon', self%epsilon, stat, errmsg); if (stat /= 0) return
    if (self%epsilon < 0) then
      stat = COLNN_ERR_FORMAT
      errmsg = spec%where()//': epsilon must be >= 0'
      return
    end if
    call spec%get_real('momentum', self%momentum, stat, errmsg, default=0.99_wp)
    if (stat /= 0) return
    call spec%get_logical('center', self%center, stat, errmsg); if (stat /= 0) return
    call spec%get_logical('scale', self%scale, stat, errmsg); if (stat /= 0) return
    if (self%scale) then
      call spec%get_vector('gamma', n_in, self%gamma, stat, errmsg); if (stat /= 0) return
    end if
    if (self%center) then
      call spec%get_vector('beta', n_in, self%beta, stat, errmsg); if (stat /= 0) return
    end if
    call spec%get_vector('moving_mean', n_in, self%moving_mean, stat, errmsg)
    if (stat /= 0) return
    call spec%get_vector('moving_variance', n_in, self%moving_variance, stat, errmsg)
    if (stat /= 0) return
    if (any(self%moving_variance + self%epsilon <= 0)) then
      stat = COLNN_ERR_FORMAT
      errmsg = spec%where()//': moving_variance + epsilon must be > 0'
      return
    end if
    call spec%check_all_used(stat, errmsg); if (stat /= 0) return
    call fold(self)
  end subroutine batchnorm_init

  !> The inference form y = x s + t from the current parameters and moving statistics.
  subroutine fold(self)
    class(batchnorm_t), intent(inout) :: self
    real(dp), allocatable :: inv(:)
    inv = 1 / sqrt(real(self%moving_variance, dp) + real(self%epsilon, dp))
    if (self%scale) inv = inv * self%gamma
    self%s = real(inv, wp)
    self%t = real(-self%moving_mean * inv, wp)
    if (self%center) self%t = self%t + self%beta
  end subroutine fold

  !> Batch statistics (biased variance, as Keras); moving statistics updated with Keras'
  !> momentum rule: moving = moving * momentum + batch * (1 - momentum).
  subroutine batchnorm_forward_train(self, nc, x, y)
    class(batchnorm_t), intent(inout) :: self
    integer, intent(in) :: nc
    real(wp), intent(in) :: x(self%n_in, nc)
    real(wp), intent(out) :: y(self%n_out, nc)
    real(wp) :: mean(self%n_in), var(self%n_in)
    integer :: j
    mean = sum(x, dim=2) / nc
    var = 0
    do j = 1, nc
      var = var + (x(:, j) - mean)**2
    end do
    var = var / nc
    if (allocated(self%xhat)) then
      if (size(self%xhat, 2) /= nc) deallocate (self%xhat)
    end if
    if (.not. allocated(self%xhat)) allocate (self%xhat(self%n_in, nc))
    self%inv_std = 1 / sqrt(var + self%epsilon)
    do j = 1, nc
      self%xhat(:, j) = (x(:, j) - mean) * self%inv_std
      y(:, j) = self%xhat(:, j)
      if (self%scale) y(:, j) = y(:, j) * self%gamma
      if (self%center) y(:, j) = y(:, j) + self%beta
    end do
    self%moving_mean = self%moving_mean * self%momentum + mean * (1 - self%momentum)
    self%moving_variance = self%moving_variance * self%momentum + var * (1 - self%momentum)
    call fold(self)
  end subroutine batchnorm_forward_train

  subroutine batchnorm_backward(self, nc, x, y, dy, dx, stat, errmsg)
    class(batchnorm_t), intent(inout) :: self
    integer, intent(in) :: nc
    real(wp), intent(in) :: x(self%n_in, nc)
    real(wp), intent(in) :: y(self%n_out, nc)
    real(wp), intent(in) :: dy(self%n_out, nc)
    real(wp), intent(out) :: dx(self%n_in, nc)
    integer, intent(out) :: stat
    character(len=:), allocatable, intent(out) :: errmsg
    real(wp) :: sum_d(self%n_in), sum_dx(self%n_in)
    integer :: j
    stat = COLNN_OK
    errmsg = ''
    if (.not. allocated(self%xhat)) then
      stat = COLNN_ERR_ARGUMENT
      errmsg = 'batch_normalization backward: no forward_train before'
      return
    end if
    if (self%scale) self%dgamma = sum(dy * self%xhat, dim=2)
    if (self%center) self%dbeta = sum(dy, dim=2)
    ! dxhat = dy * gamma; dx = inv_std / N (N dxhat - sum(dxhat) - xhat sum(dxhat xhat))
    do j = 1, nc
      dx(:, j) = dy(:, j)
      if (self%scale) dx(:, j) = dx(:, j) * self%gamma
    end do
    sum_d = sum(dx, dim=2)
    sum_dx = sum(dx * self%xhat, dim=2)
    do j = 1, nc
      dx(:, j) = self%inv_std / nc * (nc * dx(:, j) - sum_d - self%xhat(:, j) * sum_dx)
    end do
  end subroutine batchnorm_backward

  pure integer function batchnorm_num_trainable(self)
    class(batchnorm_t), intent(in) :: self
    batchnorm_num_trainable = 0
    if (self%scale) batchnorm_num_trainable = batchnorm_num_trainable + self%n_in
    if (self%center) batchnorm_num_trainable = batchnorm_num_trainable + self%n_in
  end function batchnorm_num_trainable

  subroutine batchnorm_get_params(self, p)
    class(batchnorm_t), intent(in) :: self
    real(wp), intent(out) :: p(:)
    integer :: k
    k = 0
    if (self%scale) then
      p(1:self%n_in) = self%gamma
      k = self%n_in
    end if
    if (self%center) p(k + 1:k + self%n_in) = self%beta
  end subroutine batchnorm_get_params

  subroutine batchnorm_set_params(self, p)
    class(batchnorm_t), intent(inout) :: self
    real(wp), intent(in) :: p(:)
    integer :: k
    k = 0
    if (self%scale) then
      self%gamma = p(1:self%n_in)
      k = self%n_in
    end if
    if (self%center) self%beta = p(k + 1:k + self%n_in)
    call fold(self)
  end subroutine batchnorm_set_params

  subroutine batchnorm_get_grads(self, g)
    class(batchnorm_t), intent(in) :: self
    real(wp), intent(out) :: g(:)
    integer :: k
    g = 0
    k = 0
    if (self%scale) then
      if (allocated(self%dgamma)) g(1:self%n_in) = self%dgamma
      k = self%n_in
    end if
    if (self%center .and. allocated(self%dbeta)) g(k + 1:k + self%n_in) = self%dbeta
  end subroutine batchnorm_get_grads

  subroutine batchnorm_describe(self, spec)
    class(batchnorm_t), intent(in) :: self
    type(layer_spec_t), intent(inout) :: spec
    call spec%set_real('epsilon', self%epsilon)
    call spec%set_real('momentum', self%momentum)
    call spec%set_logical('center', self%center)
    call spec%set_logical('scale', self%scale)
    if (self%scale) call spec%set_tensor_1d('gamma', self%gamma)
    if (self%center) call spec%set_tensor_1d('beta', self%beta)
    call spec%set_tensor_1d('moving_mean', self%moving_mean)
    call spec%set_tensor_1d('moving_variance', self%moving_variance)
  end subroutine batchnorm_describe

  pure logical function batchnorm_is_elementwise(self)
    class(batchnorm_t), intent(in) :: self
    batchnorm_is_elementwise = .true.
  end function batchnorm_is_elementwise

  subroutine batchnorm_apply_inplace(self, nc, a)
    class(batchnorm_t), intent(in) :: self
    integer, intent(in) :: nc
    real(wp), intent(inout) :: a(self%n_out, nc)
    integer :: j
    do j = 1, nc
      a(:, j) = a(:, j) * self%s + self%t
    end do
  end subroutine batchnorm_apply_inplace

  subroutine batchnorm_forward(self, nc, x, y)
    class(batchnorm_t), intent(in) :: self
    integer, intent(in) :: nc
    real(wp), intent(in) :: x(self%n_in, nc)
    real(wp), intent(out) :: y(self%n_out, nc)
    y = x
    call self%apply_inplace(nc, y)
  end subroutine batchnorm_forward

  pure integer(i8) function batchnorm_num_params(self)
    class(batchnorm_t), intent(in) :: self
    batchnorm_num_params = 2 * int(self%n_in, i8)
    if (self%scale) batchnorm_num_params = batchnorm_num_params + self%n_in
    if (self%center) batchnorm_num_params = batchnorm_num_params + self%n_in
  end function batchnorm_num_params

  pure integer function batchnorm_num_state(self)
    class(batchnorm_t), intent(in) :: self
    batchnorm_num_state = 2 * self%n_in
  end function batchnorm_num_state

  subroutine batchnorm_get_state(self, s)
    class(batchnorm_t), intent(in) :: self
    real(wp), intent(out) :: s(:)
    s(1:self%n_in) = self%moving_mean
    s(self%n_in + 1:2 * self%n_in) = self%moving_variance
  end subroutine batchnorm_get_state

  subroutine batchnorm_set_state(self, s)
    class(batchnorm_t), intent(inout) :: self
    real(wp), intent(in) :: s(:)
    self%moving_mean = s(1:self%n_in)
    self%moving_variance = s(self%n_in + 1:2 * self%n_in)
    call fold(self)
  end subroutine batchnorm_set_state
end module colnn_batchnorm
